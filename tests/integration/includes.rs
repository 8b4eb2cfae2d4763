//! `include:` globs relative to the including file, C-locale order, `defaults:` applying to
//! included services, names unique over every file, and errors that name the included file.

use crate::harness::{Daemon, EX_CONFIG, TestDir, all_output, check_config, rinetd};

/// A table in `dir` including `conf.d/*.yaml`, with `services` for the included files.
fn table_with_includes(
    dir: &TestDir,
    main_services: &str,
    included: &[(&str, &str)],
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    for (name, yaml) in included {
        dir.write(&format!("conf.d/{name}"), yaml, 0o644);
    }
    let services = if main_services.is_empty() {
        "services: []\n".to_string()
    } else {
        format!("services:\n{main_services}")
    };
    dir.config(&format!(
        "defaults:\n  max_children: 7\ninclude:\n  - conf.d/*.yaml\n{services}"
    ))
}

fn service(name: &str, server: &str) -> String {
    format!("  - name: {name}\n    address: 127.0.0.1\n    port: 0\n    server: {server}\n")
}

#[test]
fn included_services_are_served_in_c_locale_order() {
    let dir = TestDir::new("include-order");
    let server = dir.script("hello.sh", "echo \"hello $RINETD_SERVICE\"");
    let server = server.display().to_string();
    let config = table_with_includes(
        &dir,
        &service("main", &server),
        &[
            (
                "b.yaml",
                &format!("services:\n{}", service("from-b", &server)),
            ),
            (
                "B.yaml",
                &format!("services:\n{}", service("from-upper-b", &server)),
            ),
            (
                "a.yaml",
                &format!("services:\n{}", service("from-a", &server)),
            ),
            (
                "skip.yml",
                &format!("services:\n{}", service("not-matched", &server)),
            ),
        ],
    );
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
    assert!(all_output(&output).contains("OK, 4 services"));
    let daemon = Daemon::spawn(Daemon::command(&config));
    let order: Vec<String> = daemon
        .lines()
        .iter()
        .filter_map(|l| {
            l.split_once(": listening")
                .map(|(head, _)| head.to_string())
        })
        .collect();
    // Uppercase sorts before lowercase in the C locale.
    assert_eq!(
        order,
        [
            "rinetd: main/tcp",
            "rinetd: from-upper-b/tcp",
            "rinetd: from-a/tcp",
            "rinetd: from-b/tcp"
        ]
    );
    assert_eq!(daemon.request("from-a", ""), "hello from-a\n");
}

#[test]
fn an_error_in_an_included_file_names_that_file_and_line() {
    let dir = TestDir::new("include-error");
    let server = dir.script("hello.sh", "echo hello").display().to_string();
    let bad = format!("services:\n{}    sever: x\n", service("broken", &server));
    let config = table_with_includes(&dir, "", &[("bad.yaml", &bad)]);
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let included = dir.join("conf.d/bad.yaml");
    assert!(
        text.contains(&format!("{}:6:5:", included.display())),
        "{text}"
    );
    assert!(text.contains("unknown key \"sever\""), "{text}");
}

#[test]
fn names_are_unique_across_files_and_defaults_apply_to_included_services() {
    let dir = TestDir::new("include-unique");
    let server = dir.script("hello.sh", "echo hello").display().to_string();
    let twice = format!("services:\n{}", service("same", &server));
    let config = table_with_includes(&dir, &service("same", &server), &[("x.yaml", &twice)]);
    let text = all_output(&check_config(&config));
    assert!(text.contains("duplicate service name"), "{text}");
    assert!(text.contains("x.yaml"), "{text}");

    let dir = TestDir::new("include-defaults");
    let server = dir.script("hello.sh", "echo hello").display().to_string();
    let included = format!("services:\n{}", service("inc", &server));
    let config = table_with_includes(&dir, "", &[("inc.yaml", &included)]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_children: 7", "user: no-such-user-here");
    std::fs::write(&config, text).unwrap();
    let text = all_output(&check_config(&config));
    // Located where the value is written (the main file's defaults), for the included service.
    assert!(
        text.contains(
            "rinetd.conf:2:9: service \"inc\": key \"user\": unknown user \"no-such-user-here\""
        ),
        "{text}"
    );
}

#[test]
fn a_missing_literal_include_is_an_error_and_an_empty_glob_is_not() {
    let dir = TestDir::new("include-missing");
    let config = dir.config("include: [nothing-here.yaml]\nservices: []\n");
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    assert!(all_output(&output).contains("nothing-here.yaml"));
    let config = dir.config("include: [\"none.d/*.yaml\"]\nservices: []\n");
    let output = rinetd().args(["-t", "-c"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
}

#[test]
fn as_root_an_included_file_others_can_write_is_refused() {
    if !crate::harness::is_root() {
        eprintln!("skipped: the permission check applies only when rinetd runs as root");
        return;
    }
    let dir = TestDir::new("include-writable");
    let server = dir.script("hello.sh", "echo hello").display().to_string();
    let included = format!("services:\n{}", service("inc", &server));
    let config = table_with_includes(&dir, "", &[("inc.yaml", &included)]);
    assert_eq!(check_config(&config).status.code(), Some(0));
    let file = dir.join("conf.d/inc.yaml");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    assert!(
        text.contains("inc.yaml") && text.contains("writable by group or others"),
        "{text}"
    );
}

#[test]
fn an_included_file_holds_services_only() {
    let dir = TestDir::new("include-services-only");
    let config = table_with_includes(&dir, "", &[("x.yaml", "defaults: {}\nservices: []\n")]);
    let text = all_output(&check_config(&config));
    assert!(text.contains("x.yaml:1:1"), "{text}");
    assert!(
        text.contains("unknown key \"defaults\" (valid keys: services)"),
        "{text}"
    );
}

#[test]
fn a_quoted_umask_in_defaults_breaks_every_included_service() {
    let dir = TestDir::new("include-defaults-umask");
    let server = dir.script("hello.sh", "umask");
    let server = server.display().to_string();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    dir.write(
        "conf.d/a.yaml",
        &format!(
            "# a comment that shifts every offset of this file\nservices:\n{}",
            service("inc", &server)
        ),
        0o644,
    );
    let config =
        dir.config("defaults:\n  umask: \"027\"\ninclude:\n  - conf.d/*.yaml\nservices: []\n");
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
    let daemon = crate::harness::Daemon::spawn(crate::harness::Daemon::command(&config));
    assert_eq!(daemon.request("inc", ""), "0027\n");
}

#[test]
fn a_bad_value_in_defaults_is_reported_where_it_is_written_not_in_an_included_file() {
    let dir = TestDir::new("include-defaults-located");
    let server = dir.script("hello.sh", "echo hello");
    let server = server.display().to_string();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    dir.write(
        "conf.d/a.yaml",
        &format!("services:\n{}", service("inc", &server)),
        0o644,
    );
    let config = dir.config("defaults:\n  umask: 022\ninclude:\n  - conf.d/*.yaml\nservices: []\n");
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    assert!(text.contains("rinetd.conf:2:10:"), "{text}");
    assert!(!text.contains("a.yaml"), "{text}");
}

#[test]
fn an_include_glob_with_several_stars_takes_exponential_time() {
    // A reload runs inside the event loop: a glob that spins would stop every service.
    let dir = TestDir::new("include-glob-stars");
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    dir.write(
        &format!("conf.d/{}.yaml", "a".repeat(80)),
        "services: []\n",
        0o644,
    );
    let config = dir.config("include:\n  - \"conf.d/*a*a*a*a*a*a*a*a*b.yaml\"\nservices: []\n");
    let (status, stderr) =
        crate::harness::run_to_exit(&dir, rinetd().args(["-t", "-c"]).arg(&config));
    assert_eq!(status.code(), Some(0), "{stderr}");
}
