//! The one pixel format every stage after decoding works on: 8-bit RGB, rows top to bottom,
//! pixels interleaved (what `np.array(pil_image.convert("RGB"))` holds).

/// An 8-bit RGB image, `height` rows of `width` pixels of 3 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps `data` (`width * height * 3` bytes); `None` if the length does not match.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        let want = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (data.len() == want).then_some(Self {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved RGB bytes, row by row.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}
