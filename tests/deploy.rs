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
    // promtool comes with Debian's prometheus package, when installed: it
    // checks the rules and runs their unit tests (two keyway pods).
    for args in [
        ["check", "rules", "conf/prometheus/alerts.yml"],
        ["test", "rules", "conf/prometheus/alerts_test.yml"],
    ] {
        if let Ok(promtool) = Command::new("promtool")
            .args(args)
            .current_dir(root)
            .output()
        {
            assert!(
                promtool.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&promtool.stdout),
                String::from_utf8_lossy(&promtool.stderr)
            );
        }
    }
}
