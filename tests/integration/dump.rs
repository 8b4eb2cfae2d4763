//! `rinetd -T`: the effective table as YAML (includes expanded, defaults applied, every default
//! written out) that `rinetd -t` accepts as it is, and that dumps to the very same text again.

use std::path::Path;
use std::process::Output;

use nix::unistd::{Gid, Uid, User};

use crate::harness::{EX_CONFIG, TestDir, all_output, rinetd, self_signed_certificate};

fn dump(config: &Path, format: &str) -> Output {
    rinetd()
        .args(["--format", format, "-T", "-c"])
        .arg(config)
        .output()
        .expect("run rinetd -T")
}

/// Dumps `config`, checks the dump with -t, dumps the dump: the two dumps must be equal.
/// Returns the first dump.
fn assert_fixed_point(dir: &TestDir, config: &Path, format: &str) -> String {
    let first = dump(config, format);
    assert_eq!(first.status.code(), Some(0), "{}", all_output(&first));
    let text = String::from_utf8(first.stdout).expect("UTF-8");
    let dumped = dir.write("dumped.conf", &text, 0o644);
    let check = rinetd().arg("-t").arg("-c").arg(&dumped).output().unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "-t refuses the dump:\n{}\n{text}",
        all_output(&check)
    );
    let second = dump(&dumped, "yaml");
    assert_eq!(second.status.code(), Some(0), "{}", all_output(&second));
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        text,
        "a dump of the dump differs"
    );
    text
}

#[test]
fn the_dump_of_a_table_using_every_key_checks_and_dumps_to_itself() {
    let dir = TestDir::new("dump-every-key");
    let server = dir.script("hello.sh", "echo hello").display().to_string();
    let Some((cert, key)) = self_signed_certificate(&dir) else {
        eprintln!("skipped: the openssl CLI is needed to make a certificate");
        return;
    };
    let (uid, gid) = (Uid::effective(), Gid::effective());
    let (cert, key) = (cert.display(), key.display());
    let path = dir.path.display();
    std::fs::create_dir(dir.join("conf.d")).unwrap();
    dir.write(
        "conf.d/more.yaml",
        &format!(
            "services:\n  - name: included\n    address: 127.0.0.1\n    port: 0\n    server: {server}\n    wait: true\n"
        ),
        0o644,
    );
    let config = dir.config(&format!(
        "defaults:
  user: {uid}
  group: {gid}
  env: {{GREETING: \"hello world\"}}
  pass_env: [HOME]
  cwd: /tmp
  stderr: log
  max_children: 10
  per_source: 2
  per_source_rate: {{max: 20, per: 60s}}
  source_prefix: {{ipv4: 24, ipv6: 56}}
  rate_limit: {{max: 100, per: 1s, pause: 5s}}
  only_from: [127.0.0.0/8, \"::1\"]
  no_access: [127.0.0.2]
  timeout: 30s
  rlimits: {{nofile: 1024, core: 0, cpu: unlimited}}
  nice: 5
  umask: \"027\"
  backlog: 128
  keepalive: true
  proxy_protocol: false
  respawn_max_delay: 90s
include: [conf.d/*.yaml]
services:
  - name: web
    address: [127.0.0.1, \"::1\"]
    port: 0
    server: {server}
    args: [hello, --flag]
    tls:
      cert: {cert}
      key: {key}
      sni:
        - {{names: [other.example, \"*.other.example\"], cert: {cert}, key: {key}}}
      client_ca: {cert}
      alpn: [http/1.1]
      min_version: 1.3
      handshake_timeout: 5s
  - name: echo
    address: 127.0.0.1
    port: echo
    builtin: echo
    proxy_protocol: true
  - name: dgram
    protocol: udp
    address: 127.0.0.1
    port: 0
    server: {server}
    wait: false
    stderr: null
  - name: sock
    protocol: unix
    path: {path}/s.sock
    socket_mode: \"0660\"
    server: {server}
  - name: keeper
    protocol: none
    respawn: true
    notify: true
    server: {server}
  - name: held
    address: 127.0.0.1
    port: 0
    respawn: true
    server: {server}
  - name: scrape
    protocol: unix
    path: {path}/m.sock
    builtin: metrics
  - name: off
    address: 127.0.0.1
    port: 0
    server: {server}
    disabled: true
"
    ));
    let text = assert_fixed_point(&dir, &config, "yaml");
    // Includes expanded, defaults applied, names resolved, defaults written out.
    assert!(
        !text.contains("include:") && !text.contains("defaults:"),
        "{text}"
    );
    assert!(text.contains("  - name: included\n"), "{text}");
    assert!(
        text.contains("    port: 7\n"),
        "port: echo is written as its number: {text}"
    );
    assert!(text.contains("    umask: \"027\"\n"), "{text}");
    assert!(
        text.contains("    per_source_rate: {max: 20, per: 1m}\n"),
        "{text}"
    );
    assert!(text.contains("    stderr: \"null\"\n"), "{text}");
    assert!(text.contains("      min_version: \"1.3\"\n"), "{text}");
    assert!(text.contains("    respawn_max_delay: 90s\n"), "{text}");
    // A builtin takes no handler setting from defaults, a supervised service no client limit.
    let scrape = text.split("  - name: scrape\n").nth(1).unwrap_or_default();
    let scrape = scrape.split("  - name:").next().unwrap_or_default();
    assert!(
        !scrape.contains("user:") && !scrape.contains("umask:"),
        "{scrape}"
    );
    let keeper = text.split("  - name: keeper\n").nth(1).unwrap_or_default();
    let keeper = keeper.split("  - name:").next().unwrap_or_default();
    assert!(
        !keeper.contains("max_children:") && keeper.contains("notify: true"),
        "{keeper}"
    );
}

#[test]
fn the_dump_of_an_inetd_conf_is_a_yaml_table_that_dumps_to_itself() {
    let dir = TestDir::new("dump-inetd");
    let user = User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| Uid::effective().to_string(), |user| user.name);
    let conf = dir.write(
        "inetd.conf",
        &format!(
            "# a comment\n127.0.0.1:0 stream tcp nowait.5 {user} /bin/echo echo hi\n\
             127.0.0.1:daytime stream tcp nowait {user} internal\n\
             127.0.0.1:0 dgram udp wait {user} /bin/cat cat\n"
        ),
        0o644,
    );
    let text = assert_fixed_point(&dir, &conf, "inetd");
    assert!(text.contains("    port: 13\n"), "{text}");
    assert!(
        text.contains("    rate_limit: {max: 5, per: 1m, pause: 10m}\n"),
        "{text}"
    );
    assert!(text.contains("    stderr: socket\n"), "{text}");
}

#[test]
fn a_bad_table_dumps_nothing_and_says_why() {
    let dir = TestDir::new("dump-bad");
    let config = dir.config("services:\n  - name: a\n    port: 70000\n    builtin: echo\n");
    let output = dump(&config, "yaml");
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    assert!(output.stdout.is_empty(), "{}", all_output(&output));
    assert!(all_output(&output).contains("70000"));
}
