//! What the workspace's tests share: where the packaged model files are, which external
//! commands exist, and one rule for what is missing. A test that needs a model file or a
//! command that is not there is skipped with a note on a developer's machine, but fails
//! under CI (`CI` set, as CI services and `.ci/run` set it): there a missing prerequisite is
//! a broken setup, and a test that returns early would count as passed without checking
//! anything.

mod golden;
mod logprobs;
mod rng;

use std::path::PathBuf;

pub use golden::{floats, floats_f32, relative_diff};
pub use logprobs::{log_softmax, logprob_diff};
pub use rng::Rng;

/// True when running under CI: `CI` is set to anything but `""`, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Reports a missing prerequisite: panics under CI, else prints why the test is skipped.
pub fn missing(what: &str) {
    if under_ci() {
        panic!("{what}, and CI is set: the test setup (scripts/test.sh) must provide it");
    }
    eprintln!("{what}: skipping (scripts/test.sh provides it)");
}

/// The folder holding the packaged model files (`$WEFT_TEST_MODELS`, which scripts/test.sh
/// sets), or `None` after [`missing`] when it is unset.
pub fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("WEFT_TEST_MODELS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            missing("WEFT_TEST_MODELS is not set");
            None
        }
    }
}

/// The path of model file `name` (a file or folder inside the models folder), or `None`
/// after [`missing`] when it is not there.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let path = models_dir()?.join(name);
    if path.exists() {
        Some(path)
    } else {
        missing(&format!("{} does not exist", path.display()));
        None
    }
}

/// Whether every command in `names` can be run (found on `PATH`), after [`missing`] for the
/// first that cannot.
pub fn commands(names: &[&str]) -> bool {
    for name in names {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing(&format!("the command {name} is not installed"));
            return false;
        }
    }
    true
}
