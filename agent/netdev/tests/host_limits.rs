//! The host's limits raised and given back by many users at once. Threads
//! stand for the processes that are users (providers, the stand-in
//! cluster): each call opens the registry anew, and flock locks open files,
//! not processes. Needs root (it writes /proc/sys and /run).

use std::path::{Path, PathBuf};

use merak_netdev::host_limits::{self, Limits};

#[test]
fn users_coming_and_going_at_once_never_fail_and_the_host_gets_its_values_back() {
    let (others, before) = (host_limits::users(), host_limits::arp_entries().expect("gc_thresh3"));
    let needs = Limits { arp_entries: before.max(1024) * 4, backlog: 0 };
    let users: Vec<_> = (0..8)
        .map(|user| {
            std::thread::spawn(move || {
                let dir = PathBuf::from(format!("/tmp/merak-limits-test-{}-{user}", std::process::id()));
                for round in 0..40 {
                    host_limits::ensure(&dir, needs).unwrap_or_else(|e| panic!("user {user}, round {round}: {e}"));
                    let entries = host_limits::arp_entries().expect("gc_thresh3");
                    assert!(
                        entries >= needs.arp_entries,
                        "user {user}, round {round}: gc_thresh3 {entries} under a user"
                    );
                    host_limits::release(&dir).unwrap_or_else(|e| panic!("user {user}, round {round}: {e}"));
                }
            })
        })
        .collect();
    for user in users {
        user.join().expect("every user's ensure and release succeeded");
    }
    if others.is_empty() && host_limits::users().is_empty() {
        assert_eq!(host_limits::arp_entries().expect("gc_thresh3"), before, "the host's own value is back");
        assert!(!Path::new("/run/merak").exists(), "nothing of the registry stays");
    }
}
