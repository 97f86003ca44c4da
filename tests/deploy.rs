//! The shipped deployment files parse and say what operators rely on
//! (probes, drain hook, non-root, topology, alert thresholds); with
//! `promtool` installed the alert rules are also checked by Prometheus.
//! No container engine or cluster runs here, so nothing is deployed.

use std::path::Path;
use std::process::Command;

#[test]
fn manifests_alerts_and_dashboard_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = Path::new(root).join("tests/clients/.venv/bin/python");
    let out = Command::new(&python)
        .arg(Path::new(root).join("tests/deploy/check_manifests.py"))
        .arg(root)
        .output()
        .expect("tests/clients/install.sh provides the Python venv with PyYAML");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The manifests against Kubernetes' own schemas, strictly (unknown
    // fields refused): the native sidecar from 1.29 on, the older form
    // from 1.28.
    let validate = Path::new(root).join("tests/clients/.venv/bin/kubernetes-validate");
    for (manifest, versions) in [
        ("conf/k8s/keyway-sidecar.yaml", ["1.29.0", "1.33.0"]),
        ("conf/k8s/keyway-sidecar-legacy.yaml", ["1.28.0", "1.33.0"]),
    ] {
        for version in versions {
            let out = Command::new(&validate)
                .args(["--strict", "-k", version, manifest])
                .current_dir(root)
                .output()
                .expect("kubernetes-validate: tests/clients/install.sh installs it");
            assert!(
                out.status.success(),
                "{manifest} against Kubernetes {version}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // promtool (tests/deploy/install.sh provides it) checks the rules and
    // runs their unit tests (two keyway pods).
    let unpacked = Path::new(root).join("tests/deploy/.promtool/usr/bin/promtool");
    let promtool = if unpacked.exists() {
        unpacked
    } else {
        "promtool".into()
    };
    for args in [
        ["check", "rules", "conf/prometheus/alerts.yml"],
        ["test", "rules", "conf/prometheus/alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(root)
            .output()
            .expect("promtool: run tests/deploy/install.sh (scripts/test.sh does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One instruction of a Dockerfile stage that matters for building it.
enum Step {
    /// `COPY src... dest` from the build context.
    Copy(Vec<String>, String),
    Run(String),
}

/// The instructions of the stage named `stage` (`FROM ... AS stage`), with
/// continuation lines joined.
fn dockerfile_stage(dockerfile: &str, stage: &str) -> Vec<Step> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut inside = false;
    let mut steps = Vec::new();
    for line in joined.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("FROM") => inside = line.to_ascii_lowercase().ends_with(&format!(" as {stage}")),
            Some("COPY") if inside => {
                let args: Vec<String> = words.map(String::from).collect();
                assert!(
                    !args.iter().any(|a| a.starts_with("--from")),
                    "the build stage copies only from the context"
                );
                let (dest, sources) = args.split_last().expect("COPY has a destination");
                steps.push(Step::Copy(sources.to_vec(), dest.clone()));
            }
            Some("RUN") if inside => steps.push(Step::Run(line[3..].trim().to_string())),
            _ => {}
        }
    }
    steps
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The image's build stage, run here from exactly the files its COPY lines
/// name (in a scratch directory, not the repository): a file the build
/// needs but the Dockerfile does not copy fails this test, as it would
/// fail `docker build`. The runtime stage's binary must come out stripped.
#[test]
fn the_dockerfile_build_stage_builds_from_what_it_copies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let steps = dockerfile_stage(&dockerfile, "build");
    assert!(
        steps.iter().any(|s| matches!(s, Step::Run(_))),
        "a build stage"
    );
    let scratch = std::env::temp_dir().join(format!("keyway-docker-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // Shared between runs so dependencies build once; the stage's own
    // `target/` paths land here.
    let target = root.join("target/dockerfile-stage");
    for step in &steps {
        match step {
            Step::Copy(sources, dest) => {
                for source in sources {
                    assert!(
                        !ignored.lines().any(|l| l.trim().trim_end_matches('/') == source.trim_end_matches('/')),
                        ".dockerignore excludes {source}, which the Dockerfile copies"
                    );
                    let from = root.join(source);
                    let to = if dest.ends_with('/')
                        || sources.len() > 1
                        || dest == "."
                        || dest == "./"
                    {
                        scratch
                            .join(dest)
                            .join(Path::new(source).file_name().unwrap())
                    } else {
                        scratch.join(dest)
                    };
                    copy_tree(&from, &to);
                }
            }
            Step::Run(command) => {
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .current_dir(&scratch)
                    .env("CARGO_TARGET_DIR", &target)
                    .status()
                    .expect("sh");
                assert!(status.success(), "RUN {command} failed in the build stage");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    // The runtime stage copies the binary from this path of the build stage.
    let shipped = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("COPY --from=build /src/target/"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the runtime stage copies the binary");
    let binary = target.join(shipped);
    let size = std::fs::metadata(&binary)
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()))
        .len();
    eprintln!("image binary {}: {:.1} MB", shipped, size as f64 / 1e6);
    assert!(
        size < 20_000_000,
        "the shipped binary is stripped: {size} bytes"
    );
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("keyway "));
}

/// The image itself, where a container engine runs and can fetch the base
/// images; says so plainly where it cannot (this project's CI has none).
#[test]
fn the_image_builds_with_a_container_engine() {
    let root = env!("CARGO_MANIFEST_DIR");
    let engine = Command::new("docker").arg("info").output();
    if !engine.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED the_image_builds_with_a_container_engine: no running container engine \
             (docker info failed); the build stage is checked by \
             the_dockerfile_build_stage_builds_from_what_it_copies"
        );
        return;
    }
    let build = Command::new("docker")
        .args(["build", "-t", "keyway:test", root])
        .output()
        .expect("docker build");
    assert!(
        build.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
}
