//! The service files Debian ships with xinetd, openbsd-inetd and inetutils-inetd, converted,
//! checked and served, and answered by real clients (netcat, rdate). The packages are
//! unpacked by `tests/debian-stock.sh` (run by `make deps`, or here on first use).

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::harness::{Daemon, TestDir, all_output, check_config, rinetd};

/// Where a package was unpacked (`root/` and `control/` in it), or None with the reason
/// printed (no apt, no network to the package archive).
pub fn stock_package(package: &str) -> Option<PathBuf> {
    static UNPACKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dest = UNPACKED.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target folder")
            .join("debian-stock");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/debian-stock.sh");
        let output = Command::new("sh")
            .arg(&script)
            .arg(&target)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        if output.status.success() {
            Ok(target)
        } else {
            Err(format!(
                "tests/debian-stock.sh failed (run `make deps`): {}",
                all_output(&output)
            ))
        }
    });
    match dest {
        Ok(dest) => Some(dest.join(package)),
        Err(why) => {
            eprintln!("skipped: Debian's {package} package is not available: {why}");
            None
        }
    }
}

/// The /etc/inetd.conf a package's preinst writes (a here-document) on a fresh install.
pub fn stock_inetd_conf(package: &Path) -> String {
    let preinst = fs::read_to_string(package.join("control/preinst")).expect("read preinst");
    let start = preinst
        .find("<<EOF > /etc/inetd.conf\n")
        .expect("preinst writes /etc/inetd.conf");
    let body = &preinst[start..];
    let body = &body[body.find('\n').expect("a line") + 1..];
    let end = body.find("\nEOF\n").expect("the here-document ends");
    format!("{}\n", &body[..end])
}

/// Whether `tool` is on PATH; prints why the test skips when it is not.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed (make deps installs it)");
    }
    found
}

/// A client tool the test runs, as an Option for `let … else`.
fn tool(name: &str) -> Option<()> {
    have_tool(name).then_some(())
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("run sh")
}

fn this_year() -> String {
    String::from_utf8(sh("date -u +%Y").stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// The stock lines are commented out (`#echo stream tcp nowait root internal`): uncomment
/// the service lines, keep the other comments.
fn enable_stock_lines(conf: &str) -> String {
    conf.lines()
        .map(|line| {
            let words: Vec<&str> = line.trim_start_matches('#').split_whitespace().collect();
            let is_service =
                line.starts_with('#') && words.len() >= 6 && matches!(words[1], "stream" | "dgram");
            if is_service { &line[1..] } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `rinetd convert FILE`, which must succeed; its YAML.
fn convert(file: &Path) -> String {
    let output = rinetd()
        .arg("convert")
        .arg(file)
        .output()
        .expect("run convert");
    assert!(output.status.success(), "{}", all_output(&output));
    String::from_utf8(output.stdout).expect("YAML is UTF-8")
}

/// `rinetd -t` on `file` says OK with `count` services.
fn assert_checks(file: &Path, extra: &[&str], count: usize) {
    let output = rinetd()
        .args(extra)
        .arg("-t")
        .arg("-c")
        .arg(file)
        .output()
        .expect("run -t");
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains(&format!("OK, {count} services")), "{text}");
}

#[test]
fn debian_xinetd_stock_files_convert_to_a_checked_table_of_disabled_builtins() {
    let Some(xinetd) = stock_package("xinetd") else {
        return;
    };
    let dir = TestDir::new("xinetd-stock");
    let stock_conf = fs::read_to_string(xinetd.join("root/etc/xinetd.conf")).unwrap();
    let folder = xinetd.join("root/etc/xinetd.d");
    assert!(stock_conf.contains("includedir /etc/xinetd.d"));
    let conf = dir.write(
        "xinetd.conf",
        &stock_conf.replace("/etc/xinetd.d", &folder.display().to_string()),
        0o644,
    );
    let yaml = convert(&conf);
    let config = dir.config(&yaml);
    // Five builtins over tcp and udp, and the udp ones again in the `-udp` files.
    assert_eq!(yaml.matches("\n  - name: ").count(), 15, "{yaml}");
    assert_eq!(yaml.matches("    disabled: true\n").count(), 15, "{yaml}");
    for builtin in ["echo", "discard", "daytime", "time", "chargen"] {
        assert_eq!(
            yaml.matches(&format!("builtin: {builtin}\n")).count(),
            3,
            "{yaml}"
        );
    }
    // xinetd's own `servers` and `services` have no equivalent: commented out, named.
    assert!(yaml.contains("  # - name: servers\n"), "{yaml}");
    assert!(yaml.contains("  # - name: services\n"), "{yaml}");
    assert_checks(&config, &[], 15);
}

/// The stock xinetd.d files with `disable = no`, each service on 127.0.0.1 and an ephemeral
/// port (the stock ports are the well-known ones, taken or privileged).
fn enabled_xinetd_folder(stock: &Path, dir: &TestDir) -> PathBuf {
    let folder = dir.join("xinetd.d");
    fs::create_dir_all(&folder).unwrap();
    for entry in fs::read_dir(stock).unwrap() {
        let entry = entry.unwrap();
        let text = fs::read_to_string(entry.path()).unwrap();
        let rewritten: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("port"))
            .map(|line| {
                let attribute = line.trim_start();
                if line.trim() == "{" {
                    "{\n\tport\t\t= 0\n\tbind\t\t= 127.0.0.1\n".to_string()
                } else if attribute.starts_with("disable") {
                    format!("{}\n", line.replace("yes", "no"))
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        fs::write(folder.join(entry.file_name()), rewritten).unwrap();
    }
    folder
}

#[test]
fn debian_xinetd_stock_services_enabled_are_served_to_real_clients() {
    let (Some(xinetd), Some(()), Some(())) = (stock_package("xinetd"), tool("nc"), tool("rdate"))
    else {
        return;
    };
    let dir = TestDir::new("xinetd-stock-served");
    let folder = enabled_xinetd_folder(&xinetd.join("root/etc/xinetd.d"), &dir);
    let yaml = convert(&folder);
    assert!(!yaml.contains("disabled: true"), "{yaml}");
    let config = dir.config(&yaml);
    assert_checks(&config, &[], 15);
    let daemon = Daemon::spawn(Daemon::command(&config));
    let year = this_year();

    let tcp = |name: &str| daemon.addresses_of(name, "tcp")[0].port();
    let udp = |name: &str| daemon.addresses_of(name, "udp")[0].port();

    let echo = sh(&format!(
        "printf 'hello\\n' | nc -N -w 5 127.0.0.1 {}",
        tcp("echo-stream")
    ));
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "hello\n");
    let daytime = sh(&format!("nc -d -w 5 127.0.0.1 {}", tcp("daytime-stream")));
    let daytime = String::from_utf8_lossy(&daytime.stdout).into_owned();
    assert!(
        daytime.ends_with("\r\n") && daytime.contains(&year),
        "{daytime:?}"
    );
    let rdate = sh(&format!("rdate -p -o {} 127.0.0.1", tcp("time-stream")));
    assert!(rdate.status.success(), "{}", all_output(&rdate));
    assert!(all_output(&rdate).contains(&year), "{}", all_output(&rdate));
    let chargen = sh(&format!(
        "nc -d -w 5 127.0.0.1 {} | head -c 72",
        tcp("chargen-stream")
    ));
    assert_eq!(
        String::from_utf8_lossy(&chargen.stdout),
        " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg"
    );
    let discard = sh(&format!(
        "printf 'gone\\n' | nc -N -w 5 127.0.0.1 {}",
        tcp("discard-stream")
    ));
    assert!(discard.status.success() && discard.stdout.is_empty());
    daemon.wait_for_line("discard-stream/tcp: closed client=127.0.0.1:");

    // UDP: netcat sends one datagram and stops after the first reply (-W 1).
    for name in ["echo-dgram", "echo-dgram-udp"] {
        let reply = sh(&format!(
            "printf 'ping' | nc -u -W 1 -w 5 127.0.0.1 {}",
            udp(name)
        ));
        assert_eq!(String::from_utf8_lossy(&reply.stdout), "ping", "{name}");
    }
    for name in ["daytime-dgram", "daytime-dgram-udp"] {
        let reply = sh(&format!(
            "printf '\\n' | nc -u -W 1 -w 5 127.0.0.1 {}",
            udp(name)
        ));
        assert!(
            String::from_utf8_lossy(&reply.stdout).contains(&year),
            "{name}"
        );
    }
    for name in ["time-dgram", "time-dgram-udp"] {
        let reply = sh(&format!(
            "printf '\\n' | nc -u -W 1 -w 5 127.0.0.1 {}",
            udp(name)
        ));
        assert_eq!(reply.stdout.len(), 4, "RFC 868: 32 bits from {name}");
    }
    for name in ["chargen-dgram", "chargen-dgram-udp"] {
        let reply = sh(&format!(
            "printf '\\n' | nc -u -W 1 -w 5 127.0.0.1 {}",
            udp(name)
        ));
        // RFC 864: a reply of 0 to 512 bytes of the pattern (a short one is a prefix of it).
        let pattern = b" !\"#$%&'()*+,-./";
        let shown = reply.stdout.len().min(pattern.len());
        assert!(reply.stdout.len() <= 512, "{name}");
        assert_eq!(reply.stdout[..shown], pattern[..shown], "{name}");
    }
    for name in ["discard-dgram", "discard-dgram-udp"] {
        assert_eq!(
            daemon.addresses_of(name, "udp")[0].ip(),
            Ipv4Addr::LOCALHOST
        );
    }
}

/// Ports free for tcp and udp on 127.0.0.1 and ::1 right now, one per name.
fn free_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = v4.local_addr().unwrap().port();
        let others = (
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)),
            TcpListener::bind((Ipv6Addr::LOCALHOST, port)),
            UdpSocket::bind((Ipv6Addr::LOCALHOST, port)),
        );
        if let (Ok(a), Ok(b), Ok(c)) = others {
            ports.push(port);
            held.push((v4, a, b, c));
        }
    }
    ports
}

/// `rinetd --format inetd -c CONF -f` in a mount namespace of its own whose /etc/services
/// names `ports` for the five builtins: the stock lines are served exactly as written.
fn serve_with_services(dir: &TestDir, conf: &Path, ports: &[u16]) -> Option<Daemon> {
    let private = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output();
    if !private.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot make a mount namespace (unshare --mount needs root)");
        return None;
    }
    let names = ["echo", "discard", "daytime", "time", "chargen"];
    let services: String = names
        .iter()
        .zip(ports)
        .map(|(name, port)| format!("{name}\t{port}/tcp\n{name}\t{port}/udp\n"))
        .collect();
    let services = dir.write("services", &services, 0o644);
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/services && exec "$@""#)
        .arg(&services)
        .arg(env!("CARGO_BIN_EXE_rinetd"))
        .args(["--format", "inetd", "-c"])
        .arg(conf)
        .args(["-f", "--log", "stderr"]);
    Some(Daemon::spawn(command))
}

#[test]
fn debian_openbsd_inetd_stock_conf_runs_with_format_inetd_and_converts() {
    let (Some(package), Some(()), Some(())) =
        (stock_package("openbsd-inetd"), tool("nc"), tool("rdate"))
    else {
        return;
    };
    let dir = TestDir::new("openbsd-inetd-stock");
    let stock = stock_inetd_conf(&package);
    assert!(stock.contains("#echo\t\tstream\ttcp\tnowait\troot\tinternal"));
    // A `host:` line (inetd.conf syntax) puts every line below it on 127.0.0.1.
    let conf = dir.write(
        "inetd.conf",
        &format!("127.0.0.1:\n{}", enable_stock_lines(&stock)),
        0o644,
    );
    assert_checks(&conf, &["--format", "inetd"], 6);
    let yaml = convert(&conf);
    assert_checks(&dir.config(&yaml), &[], 6);
    assert!(yaml.contains("  - name: discard-udp\n    protocol: udp\n    address: 127.0.0.1\n    port: discard\n    builtin: discard\n"), "{yaml}");

    let ports = free_ports(5);
    let Some(daemon) = serve_with_services(&dir, &conf, &ports) else {
        return;
    };
    let (echo, discard, daytime, time, chargen) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let year = this_year();
    let reply = sh(&format!("printf 'hello\\n' | nc -N -w 5 127.0.0.1 {echo}"));
    assert_eq!(String::from_utf8_lossy(&reply.stdout), "hello\n");
    let reply = sh(&format!("nc -d -w 5 127.0.0.1 {daytime}"));
    assert!(String::from_utf8_lossy(&reply.stdout).contains(&year));
    let reply = sh(&format!("rdate -p -o {time} 127.0.0.1"));
    assert!(
        reply.status.success() && all_output(&reply).contains(&year),
        "{}",
        all_output(&reply)
    );
    let reply = sh(&format!("nc -d -w 5 127.0.0.1 {chargen} | head -c 10"));
    assert_eq!(String::from_utf8_lossy(&reply.stdout), " !\"#$%&'()");
    let reply = sh(&format!("printf 'x' | nc -N -w 5 127.0.0.1 {discard}"));
    assert!(reply.status.success() && reply.stdout.is_empty());
    daemon.wait_for_line("discard/tcp: closed client=127.0.0.1:");
    assert_eq!(daemon.addresses_of("discard-udp", "udp")[0].port(), discard);
}

#[test]
fn debian_inetutils_inetd_stock_conf_runs_over_ipv6_with_format_inetd() {
    let (Some(package), Some(()), Some(())) =
        (stock_package("inetutils-inetd"), tool("nc"), tool("rdate"))
    else {
        return;
    };
    let dir = TestDir::new("inetutils-inetd-stock");
    let stock = stock_inetd_conf(&package);
    assert!(stock.contains("#daytime\t\tstream\ttcp6\tnowait\troot\tinternal"));
    let conf = dir.write(
        "inetd.conf",
        &format!("[::1]:\n{}", enable_stock_lines(&stock)),
        0o644,
    );
    assert_checks(&conf, &["--format", "inetd"], 4);
    assert_checks(&dir.config(&convert(&conf)), &[], 4);

    let ports = free_ports(5);
    let Some(daemon) = serve_with_services(&dir, &conf, &ports) else {
        return;
    };
    let (discard, daytime, time) = (ports[1], ports[2], ports[3]);
    let year = this_year();
    let reply = sh(&format!("nc -6 -d -w 5 ::1 {daytime}"));
    assert!(String::from_utf8_lossy(&reply.stdout).contains(&year));
    let reply = sh(&format!("rdate -6 -p -o {time} ::1"));
    assert!(
        reply.status.success() && all_output(&reply).contains(&year),
        "{}",
        all_output(&reply)
    );
    let reply = sh(&format!("printf 'x' | nc -6 -N -w 5 ::1 {discard}"));
    assert!(reply.status.success() && reply.stdout.is_empty());
    daemon.wait_for_line("discard/tcp: closed client=[::1]:");
    assert_eq!(
        daemon.addresses_of("discard-udp6", "udp")[0].ip(),
        Ipv6Addr::LOCALHOST
    );
}

#[test]
fn stock_inetd_conf_as_yaml_gets_the_convert_hint() {
    let Some(package) = stock_package("openbsd-inetd") else {
        return;
    };
    let dir = TestDir::new("inetd-as-yaml");
    let conf = dir.config(&enable_stock_lines(&stock_inetd_conf(&package)));
    let text = all_output(&check_config(&conf));
    assert!(text.contains("looks like an inetd.conf"), "{text}");
    assert!(text.contains("rinetd convert"), "{text}");
}
