//! The example plugins of `plugins/examples/`, built for `wasm32-wasip2` once per test
//! binary by `plugins/examples/build.sh` (a no-op when they are up to date). Shared by
//! the end-to-end tests and by the plugin host's own tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn examples_dir() -> PathBuf {
    // Both users of this file live one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples")
}

/// The path of an example plugin's component (`greeting`, `hostile-loop`, ...).
/// Builds the examples first; panics with the build's output if that fails.
pub fn example_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dist = BUILT.get_or_init(|| {
        let dir = examples_dir();
        let out = Command::new("bash")
            .arg(dir.join("build.sh"))
            .output()
            .map_err(|e| format!("cannot run build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir.join("dist"))
    });
    match dist {
        Ok(dist) => {
            let path = dist.join(format!("{}.wasm", name.replace('-', "_")));
            assert!(path.exists(), "{} was not built", path.display());
            path
        }
        Err(e) => panic!("building the example plugins failed:\n{e}"),
    }
}

/// The bytes of an example plugin's component.
pub fn example_bytes(name: &str) -> Vec<u8> {
    let path = example_plugin(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
