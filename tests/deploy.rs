//! The files in deploy/ for running the server at box scale: the systemd
//! unit verified by systemd itself, the sysctl values checked against what
//! 100,000 connections need, the HAProxy configuration of the containers
//! checked by HAProxy, and the compose file and Dockerfile parsed. (No
//! container is built or run here: that needs a Docker daemon.)

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use wheel_server::server::capacity::{Cost, Limits};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    fs::read_to_string(deploy(path)).unwrap()
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    if !util::tool_or_skip("systemd-analyze", "--version") {
        return;
    }
    // verify wants the binary the unit names to exist: this build's.
    let unit = read("systemd/wheel-server.service").replace(
        "/usr/local/bin/wheel-server",
        env!("CARGO_BIN_EXE_wheel-server"),
    );
    let dir = std::env::temp_dir().join(format!("wheel-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wheel-server.service");
    fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // systemd warns (and still exits 0) about an unknown key: any line
    // about this unit fails the test.
    let about_it: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("wheel-server.service"))
        .collect();
    assert!(out.status.success() && about_it.is_empty(), "{stderr}");
    // What a thread per connection needs from systemd.
    for line in [
        "TasksMax=infinity",
        "LimitNOFILE=200000",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    // Stop waits longer than the drain it asks for.
    let seconds = |key: &str| -> u64 {
        let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..].trim_end_matches('s').parse().unwrap()
    };
    assert!(
        seconds("TimeoutStopSec=") > seconds("Environment=WHEEL_SERVER_SHUTDOWN_GRACE="),
        "TimeoutStopSec must outlast the shutdown grace"
    );
}

#[test]
fn the_sysctl_file_holds_100000_connections_and_names_real_keys() {
    let text = read("sysctl.d/60-wheel-server.conf");
    let mut values = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (key, value) = line.split_once('=').expect("key = value");
        let (key, value) = (key.trim(), value.trim());
        let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(
            proc.exists(),
            "{key} is not a kernel setting ({})",
            proc.display()
        );
        values.insert(key.to_owned(), value.parse::<u64>().unwrap());
    }
    let limits = Limits {
        pid_max: Some(values["kernel.pid_max"]),
        threads_max: Some(values["kernel.threads-max"]),
        max_map_count: Some((values["vm.max_map_count"], 1000)),
        tasks_now: 1000,
        somaxconn: Some(values["net.core.somaxconn"]),
        ..Limits::default()
    };
    // The worst case: every connection keeps its thread (--park-after 0).
    let capacity = limits.capacity(Cost::THREAD, 4096);
    assert!(
        capacity.connections() >= 100_000,
        "{:?}",
        capacity.binding()
    );
    assert!(capacity.warnings.is_empty(), "{:?}", capacity.warnings);
    // A process may be given the unit's LimitNOFILE.
    assert!(values["fs.nr_open"] >= 200_000);
}

#[test]
fn the_containers_haproxy_configuration_is_valid() {
    if !util::tool_or_skip("haproxy", "-v") {
        return;
    }
    // The instances' names resolve only inside Docker: HAProxy starts
    // without them (init-addr none) and says so as warnings.
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy("docker/haproxy.cfg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Configuration file is valid"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_file_parses_with_every_instance_limited_as_the_server_needs() {
    if !util::tool_or_skip("python3", "--version") {
        return;
    }
    // YAML anchors and merge keys resolved by PyYAML, printed as JSON.
    let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(deploy("docker/compose.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = compose["services"].as_object().unwrap();
    for name in ["redis", "haproxy", "wheel1", "wheel2", "wheel3"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    for name in ["wheel1", "wheel2", "wheel3"] {
        let wheel = &services[name];
        assert_eq!(wheel["ulimits"]["nofile"]["soft"], 200_000, "{name}");
        assert_eq!(wheel["pids_limit"], -1, "{name}");
        assert_eq!(wheel["build"]["dockerfile"], "deploy/docker/Dockerfile");
        let command: Vec<&str> = wheel["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(command.contains(&"--proxy-protocol"), "{command:?}");
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_with_a_health_check() {
    let text = read("docker/Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        instructions.iter().filter(|i| **i == "FROM").count(),
        2,
        "multi-stage: {instructions:?}"
    );
    let user = text.lines().find_map(|l| l.strip_prefix("USER ")).unwrap();
    assert!(user != "root" && user != "0", "runs as {user}");
    for needed in ["HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "EXPOSE"] {
        assert!(instructions.contains(&needed), "no {needed}");
    }
    assert!(text.contains("/healthz"), "the health check asks /healthz");
    // The binary it copies is the one the build stage makes.
    assert!(text.contains("cargo build --release --locked --bin wheel-server"));
    assert!(text.contains("COPY --from=build /src/target/release/wheel-server"));
}
