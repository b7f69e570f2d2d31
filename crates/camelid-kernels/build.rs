//! With the `cuda` feature: compiles camelid's kernels (`kernels/*.cu`) to PTX with nvcc
//! (from `CUDA_HOME`/`CUDA_PATH` or `PATH`; see kernels/build-cuda.sh) for
//! `CUDA_COMPUTE_CAP` (default 90, H100/H200). The PTX is embedded in the library and
//! JIT-compiled by the driver when first used.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["attention", "layers"];

fn main() {
    // Read at run time: a target dir shared by clones at different paths (CI's cache) may run a
    // build-script binary compiled for another checkout, whose `env!` path is stale.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = PathBuf::from(manifest).join("../../kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.replace('.', "");
    for k in KERNELS {
        let src = dir.join(format!("{k}.cu"));
        let ptx = out.join(format!("{k}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-I")
            .arg(&dir)
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e} (set CUDA_HOME)", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}
