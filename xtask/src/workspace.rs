//! The workspace's members as `cargo metadata` reports them, so that every command picks up a
//! new crate under `crates/` without a list to maintain here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One workspace member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) version: String,
    /// The package's directory, relative to the workspace root (`crates/routing`).
    pub(crate) dir: PathBuf,
    /// `publish` is not `false` (nor an empty registry list).
    pub(crate) publishable: bool,
    /// The `license` field.
    pub(crate) license: Option<String>,
    /// The `readme` field as cargo resolved it (`README.md` by default when the file exists).
    pub(crate) readme: Option<String>,
    /// Workspace members this one depends on (normal and build dependencies, not dev).
    pub(crate) deps: Vec<String>,
    /// It has a `[[bin]]` target.
    pub(crate) has_bin: bool,
    /// The library target's root file (`src/lib.rs`), if it has one.
    pub(crate) lib_src: Option<PathBuf>,
    /// `description`, `repository` and `keywords` as set in the manifest.
    pub(crate) description: Option<String>,
    pub(crate) repository: Option<String>,
    pub(crate) keywords: Vec<String>,
}

/// The workspace: its root, target directory (CARGO_TARGET_DIR honoured) and members (sorted
/// by name).
#[derive(Debug)]
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) members: Vec<Member>,
}

impl Workspace {
    /// Runs `cargo metadata --no-deps --offline` in `root` (nothing is downloaded: only the
    /// members' manifests are read).
    pub(crate) fn load(root: &Path) -> Result<Self> {
        let out = Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(root)
            .output()
            .context("could not start `cargo metadata`")?;
        if !out.status.success() {
            bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self::parse(&out.stdout)
    }

    pub(crate) fn parse(json: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(json).context("cargo metadata output")?;
        let root = PathBuf::from(str_at(&v, "workspace_root")?);
        let target = PathBuf::from(str_at(&v, "target_directory")?);
        let ids: Vec<&str> = v["workspace_members"]
            .as_array()
            .context("workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let packages = v["packages"].as_array().context("packages")?;
        let names: Vec<&str> = packages
            .iter()
            .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(&id)))
            .filter_map(|p| p["name"].as_str())
            .collect();
        let mut members = Vec::new();
        for p in packages {
            if !p["id"].as_str().is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            let manifest = PathBuf::from(str_at(p, "manifest_path")?);
            let dir = manifest.parent().context("manifest_path has no parent")?;
            let dir = dir.strip_prefix(&root).unwrap_or(dir).to_path_buf();
            // `publish`: null = anywhere, [] = publish = false, [..] = those registries.
            let publishable = match &p["publish"] {
                Value::Null => true,
                Value::Array(a) => a.iter().any(|r| r.as_str() == Some("crates-io")),
                _ => false,
            };
            let deps = p["dependencies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|d| d["kind"].as_str() != Some("dev"))
                        .filter_map(|d| d["name"].as_str())
                        .filter(|n| names.contains(n))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let has_bin = p["targets"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k.as_str() == Some("bin")))
                })
            });
            let lib_src = p["targets"].as_array().and_then(|t| {
                t.iter()
                    .find(|t| {
                        t["kind"].as_array().is_some_and(|k| {
                            k.iter().any(|k| matches!(k.as_str(), Some("lib" | "rlib")))
                        })
                    })
                    .and_then(|t| t["src_path"].as_str())
                    .map(PathBuf::from)
            });
            members.push(Member {
                name: str_at(p, "name")?.to_owned(),
                version: str_at(p, "version")?.to_owned(),
                dir,
                publishable,
                license: p["license"].as_str().map(str::to_owned),
                readme: p["readme"].as_str().map(str::to_owned),
                deps,
                has_bin,
                lib_src,
                description: p["description"].as_str().map(str::to_owned),
                repository: p["repository"].as_str().map(str::to_owned),
                keywords: p["keywords"]
                    .as_array()
                    .map(|k| k.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { root, target, members })
    }

    /// The members that are published to crates.io.
    pub(crate) fn publishable(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.publishable)
    }

    pub(crate) fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The binary the project ships: the publishable member with a `[[bin]]` target named
    /// `smartproxy`.
    pub(crate) fn binary(&self) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.publishable && m.has_bin && m.name == "smartproxy")
            .context("no publishable `smartproxy` package with a binary in the workspace")
    }

    /// Publishable members in dependency order (each after the members it depends on).
    pub(crate) fn publish_order(&self) -> Result<Vec<&Member>> {
        let mut done: Vec<&Member> = Vec::new();
        let mut left: Vec<&Member> = self.publishable().collect();
        while !left.is_empty() {
            let before = left.len();
            let mut i = 0;
            while i < left.len() {
                let ready = left[i].deps.iter().all(|d| {
                    done.iter().any(|m| &m.name == d)
                        || self.member(d).is_some_and(|m| !m.publishable)
                });
                if ready {
                    done.push(left.remove(i));
                } else {
                    i += 1;
                }
            }
            if left.len() == before {
                let names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
                bail!("dependency cycle between {}", names.join(", "));
            }
        }
        Ok(done)
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key].as_str().with_context(|| format!("cargo metadata: `{key}` is missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{
      "workspace_root": "/w",
      "target_directory": "/w/target",
      "workspace_members": ["path+file:///w/crates/a#a@0.1.0", "path+file:///w/crates/b#b@0.2.0",
                            "path+file:///w/xtask#xtask@0.0.0", "path+file:///w/crates/c#smartproxy@1.0.0"],
      "packages": [
        {"id": "path+file:///w/crates/b#b@0.2.0", "name": "b", "version": "0.2.0",
         "manifest_path": "/w/crates/b/Cargo.toml", "publish": null, "license": "Apache-2.0",
         "readme": "README.md",
         "dependencies": [{"name": "a", "kind": null, "path": "/w/crates/a"},
                          {"name": "serde", "kind": null},
                          {"name": "xtask", "kind": "dev"}],
         "description": "b things", "repository": "https://x", "keywords": ["k"],
         "targets": [{"kind": ["lib"], "src_path": "/w/crates/b/src/lib.rs"}]},
        {"id": "path+file:///w/crates/a#a@0.1.0", "name": "a", "version": "0.1.0",
         "manifest_path": "/w/crates/a/Cargo.toml", "publish": null, "license": "Apache-2.0",
         "readme": null, "dependencies": [], "targets": [{"kind": ["lib"]}]},
        {"id": "path+file:///w/crates/c#smartproxy@1.0.0", "name": "smartproxy", "version": "1.0.0",
         "manifest_path": "/w/crates/c/Cargo.toml", "publish": null, "license": "Apache-2.0",
         "readme": "README.md", "dependencies": [{"name": "b", "kind": null}],
         "targets": [{"kind": ["bin"]}]},
        {"id": "path+file:///w/xtask#xtask@0.0.0", "name": "xtask", "version": "0.0.0",
         "manifest_path": "/w/xtask/Cargo.toml", "publish": [], "license": null,
         "readme": null, "dependencies": [], "targets": [{"kind": ["bin"]}]},
        {"id": "registry+https://x#serde@1.0.0", "name": "serde", "version": "1.0.0",
         "manifest_path": "/r/serde/Cargo.toml", "publish": null, "dependencies": [], "targets": []}
      ]}"#;

    #[test]
    fn members_publishability_deps_and_order() {
        let ws = Workspace::parse(META.as_bytes()).unwrap();
        let names: Vec<&str> = ws.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "smartproxy", "xtask"], "registry packages are not members");
        let b = ws.member("b").unwrap();
        assert_eq!(b.dir, Path::new("crates/b"));
        assert_eq!(b.deps, ["a"], "dev and third-party dependencies are left out");
        assert_eq!(b.lib_src.as_deref(), Some(Path::new("/w/crates/b/src/lib.rs")));
        assert_eq!((b.description.as_deref(), b.keywords.len()), (Some("b things"), 1));
        assert_eq!(ws.member("smartproxy").unwrap().lib_src, None);
        assert!(!ws.member("xtask").unwrap().publishable);
        assert_eq!(ws.binary().unwrap().name, "smartproxy");
        let order: Vec<&str> =
            ws.publish_order().unwrap().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, ["a", "b", "smartproxy"]);
    }
}
