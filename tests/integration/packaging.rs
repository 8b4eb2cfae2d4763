//! What a packager gets: `make install` / `make uninstall` with PREFIX and DESTDIR, the
//! installed binary, man pages, completions and default table working, and `make deb` giving
//! a package lintian finds no error in. The tests install the binary under test (BIN=…), so
//! no second build runs inside the test.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::debian_stock::have_tool as have;
use crate::harness::{TestDir, all_output, rinetd};

fn make(args: &[&str]) -> Output {
    Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--no-print-directory")
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_rinetd")))
        .args(args)
        .output()
        .expect("run make")
}

/// `man -l PAGE` formats the page without a warning.
fn assert_man_renders(page: &Path, title: &str) {
    let output = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", all_output(&output));
    assert!(
        output.stderr.is_empty(),
        "man warns: {}",
        all_output(&output)
    );
    assert!(text.contains(title), "{title} not in:\n{text}");
    assert!(text.contains("convert"), "the page documents convert");
}

#[test]
fn make_install_and_uninstall_honour_destdir_and_prefix() {
    if !have("make") || !have("man") {
        return;
    }
    let dir = TestDir::new("make-install");
    let destdir = format!("DESTDIR={}", dir.path.display());
    let output = make(&["install", &destdir, "PREFIX=/usr"]);
    assert!(output.status.success(), "{}", all_output(&output));

    let installed = dir.join("usr/sbin/rinetd");
    let version = Command::new(&installed).arg("-V").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("rinetd {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_man_renders(&dir.join("usr/share/man/man8/rinetd.8"), "RINETD(8)");
    assert_man_renders(
        &dir.join("usr/share/man/man5/rinetd.conf.5"),
        "RINETD.CONF(5)",
    );
    for (file, marker) in [
        ("usr/share/bash-completion/completions/rinetd", "convert"),
        ("usr/share/zsh/site-functions/_rinetd", "#compdef rinetd"),
        (
            "usr/share/fish/vendor_completions.d/rinetd.fish",
            "complete -c rinetd",
        ),
        (
            "usr/lib/systemd/system/rinetd.service",
            "ExecStart=/usr/sbin/rinetd -f -c /etc/rinetd.conf",
        ),
        ("usr/lib/systemd/system/rinetd.socket", "ListenStream="),
        ("etc/init.d/rinetd", "command=\"/usr/sbin/rinetd\""),
        (
            "usr/share/doc/rinetd/examples/rinetd.conf",
            "/usr/share/doc/rinetd/examples/handlers/hello.sh",
        ),
        ("usr/share/doc/rinetd/LICENSE", "MIT License"),
    ] {
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(text.contains(marker), "{file} lacks {marker:?}:\n{text}");
    }
    // The installed default table is accepted as it is.
    let table = dir.join("etc/rinetd.conf");
    let checked = rinetd().arg("-t").arg("-c").arg(&table).output().unwrap();
    assert!(checked.status.success(), "{}", all_output(&checked));

    // A second install keeps an edited table.
    fs::write(&table, "services: []\n").unwrap();
    let again = make(&["install", &destdir, "PREFIX=/usr"]);
    assert!(again.status.success(), "{}", all_output(&again));
    assert_eq!(fs::read_to_string(&table).unwrap(), "services: []\n");

    let output = make(&["uninstall", &destdir, "PREFIX=/usr"]);
    assert!(output.status.success(), "{}", all_output(&output));
    for gone in [
        "usr/sbin/rinetd",
        "usr/share/man/man8/rinetd.8",
        "usr/share/man/man5/rinetd.conf.5",
        "usr/share/bash-completion/completions/rinetd",
        "usr/lib/systemd/system/rinetd.service",
        "usr/share/doc/rinetd",
        "etc/init.d/rinetd",
    ] {
        assert!(!dir.join(gone).exists(), "{gone} is still there");
    }
    assert!(table.exists(), "uninstall keeps the operator's table");
}

#[test]
fn make_deb_builds_a_package_lintian_finds_no_error_in() {
    if !have("make") || !have("dpkg-deb") || !have("lintian") || !have("objdump") {
        return;
    }
    let dir = TestDir::new("make-deb");
    let output = make(&["deb", &format!("DEB_OUT={}", dir.path.display())]);
    assert!(output.status.success(), "{}", all_output(&output));
    let deb = fs::read_dir(&dir.path)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was built");

    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(" Package: rinetd-superserver\n"), "{info}");
    assert!(info.contains(" Conflicts: rinetd\n"), "{info}");
    assert!(info.contains(" Depends: libc6 (>= "), "{info}");
    let contents = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/sbin/rinetd",
        "./etc/rinetd.conf",
        "./usr/share/man/man8/rinetd.8.gz",
        "./usr/share/man/man5/rinetd.conf.5.gz",
        "./lib/systemd/system/rinetd.service",
        "./usr/share/doc/rinetd-superserver/copyright",
        "./usr/share/doc/rinetd-superserver/changelog.Debian.gz",
        "./usr/share/bash-completion/completions/rinetd",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let control = dir.join("control");
    let status = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/rinetd.conf\n",
        "dpkg keeps an edited table on upgrade"
    );

    // lintian exits non-zero on any error (E:) tag.
    let lintian = Command::new("lintian")
        .arg("--no-tag-display-limit")
        .arg(&deb)
        .output()
        .expect("run lintian");
    let report = all_output(&lintian);
    assert!(lintian.status.success(), "lintian:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E:")),
        "lintian:\n{report}"
    );

    // The man pages inside the package still render.
    let unpacked = dir.join("unpacked");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    assert_man_renders(
        &unpacked.join("usr/share/man/man8/rinetd.8.gz"),
        "RINETD(8)",
    );
}
