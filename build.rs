//! Link options for the daemon binary that Cargo.toml cannot state: packed relative
//! relocations (DT_RELR) where the C library the binary is built against can read them.

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    // A PIE's relative relocations are read by ld.so at every start: as RELA entries (24 bytes
    // each, 140 KiB for rinetd) every page of them is touched and stays resident; packed as
    // RELR they take 1.3 KiB. glibc reads RELR from 2.36 on, and a binary using it says so
    // (GLIBC_ABI_DT_RELR), so it is asked for only when building for the C library found here.
    let native = target("HOST") == target("TARGET");
    if native
        && target("CARGO_CFG_TARGET_OS") == "linux"
        && target("CARGO_CFG_TARGET_ENV") == "gnu"
        && glibc_reads_relr()
    {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this system's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`: "glibc 2.36").
fn glibc_reads_relr() -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
