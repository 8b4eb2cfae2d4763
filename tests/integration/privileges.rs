//! `user:` / `group:` — the handler runs with the user's uid, gid, groups and passwd variables,
//! with no way back (real, effective, saved and filesystem ids all dropped). Root only.

use std::collections::BTreeSet;
use std::ffi::CString;

use nix::unistd::{Gid, Group, User, getgrouplist};

use crate::harness::{Daemon, Service, TestDir, is_root};

/// Prints the ids from /proc/$$/status and the passwd variables the handler got.
const IDENTITY_SCRIPT: &str = "grep -E '^(Uid|Gid|Groups):' /proc/$$/status
echo \"USER=$USER\"
echo \"LOGNAME=$LOGNAME\"
echo \"HOME=$HOME\"
echo \"SHELL=$SHELL\"
echo \"cwd=$(pwd)\"";

/// The whitespace-separated values after `name:` or `name=` in the handler's report.
fn report_values<'a>(report: &'a str, name: &str) -> Vec<&'a str> {
    report
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':').or_else(|| rest.strip_prefix('=')))
        })
        .unwrap_or_else(|| panic!("no {name} in the handler's report:\n{report}"))
        .split_whitespace()
        .collect()
}

fn ids(values: &[u32]) -> Vec<String> {
    values.iter().map(u32::to_string).collect()
}

/// The groups initgroups(user, gid) gives.
fn group_list(user: &User, gid: Gid) -> BTreeSet<String> {
    let name = CString::new(user.name.as_str()).unwrap();
    getgrouplist(&name, gid)
        .expect("getgrouplist")
        .iter()
        .map(|gid| gid.as_raw().to_string())
        .collect()
}

fn assert_runs_as(report: &str, user: &User, gid: Gid) {
    let uid = user.uid.as_raw();
    assert_eq!(
        report_values(report, "Uid"),
        ids(&[uid; 4]),
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        report_values(report, "Gid"),
        ids(&[gid.as_raw(); 4]),
        "real, effective, saved, fs gid"
    );
    let groups: BTreeSet<String> = report_values(report, "Groups")
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(groups, group_list(user, gid), "supplementary groups");
    assert_eq!(report_values(report, "USER"), [user.name.as_str()]);
    assert_eq!(report_values(report, "LOGNAME"), [user.name.as_str()]);
    assert_eq!(report_values(report, "HOME"), [user.dir.to_str().unwrap()]);
    assert_eq!(
        report_values(report, "SHELL"),
        [user.shell.to_str().unwrap()]
    );
    assert_eq!(report_values(report, "cwd"), ["/"]);
}

#[test]
fn user_nobody_runs_the_handler_with_nobodys_ids_groups_and_passwd_variables() {
    if !is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
    let daemon_group = Group::from_name("daemon").unwrap().expect("a daemon group");
    let dir = TestDir::new("user-nobody");
    let script = dir.script("identity.sh", IDENTITY_SCRIPT);
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("nobody", &script).set("user", "nobody"),
            Service::new("regrouped", &script)
                .set("user", "nobody")
                .set("group", "daemon"),
        ],
    );
    assert_runs_as(&daemon.request("nobody", ""), &nobody, nobody.gid);
    assert_runs_as(&daemon.request("regrouped", ""), &nobody, daemon_group.gid);
}
