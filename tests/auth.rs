//! Auth without TLS, driven by the real `etcdctl` 3.4.23 through etcd's walkthrough:
//! users, roles, permissions, `auth enable`, and what each user may then do.
//!
//! Expected strings were recorded from the real etcd 3.4.23 (`DETCD_TEST_SERVER=etcd`
//! runs the same test against it).

mod common;

use common::Server;

const ROOT: &str = "root:rootpw";
const USER0: &str = "user0:pw0";

fn as_user(s: &Server, user: &str, args: &[&str]) -> common::Output {
    let mut all = vec!["--user", user];
    all.extend_from_slice(args);
    s.etcdctl(&all)
}

#[test]
fn walkthrough_with_etcdctl() {
    // A low bcrypt cost keeps the test fast; etcd accepts the same flag.
    let s = Server::start_with_args(&["--bcrypt-cost", "4"]);
    assert_eq!(
        s.etcdctl(&["role", "add", "root"]).ok(),
        "Role root created\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "add", ROOT]).ok(),
        "User root created\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "grant-role", "root", "root"]).ok(),
        "Role root is granted to user root\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "add", "role0"]).ok(),
        "Role role0 created\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "grant-permission", "role0", "readwrite", "foo"])
            .ok(),
        "Role role0 updated\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "add", USER0]).ok(),
        "User user0 created\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "grant-role", "user0", "role0"]).ok(),
        "Role role0 is granted to user user0\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "add", "root"]).err_line(),
        "Error: etcdserver: role name already exists"
    );
    assert_eq!(
        s.etcdctl(&["auth", "enable"]).ok(),
        "Authentication Enabled\n"
    );

    // user0 may read and write foo, and nothing else.
    assert_eq!(as_user(&s, USER0, &["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(as_user(&s, USER0, &["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        as_user(&s, USER0, &["get", "foo", "--consistency=s"]).ok(),
        "foo\nbar\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["put", "other", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "other"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, USER0, &["user", "list"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, "user0:wrong", &["get", "foo"]).err_line(),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(
        as_user(&s, "nobody:pw", &["get", "foo"]).err_line(),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    // A watch outside the permissions is created and canceled at once.
    let watch = as_user(&s, USER0, &["watch", "other"]);
    assert!(
        format!("{}{}", watch.stdout, watch.stderr).contains("etcdserver: permission denied"),
        "{watch:?}"
    );
    // Without credentials.
    assert_eq!(
        s.etcdctl(&["get", "foo"]).err_line(),
        "Error: etcdserver: user name is empty"
    );
    assert_eq!(
        s.etcdctl(&["put", "foo", "x"]).err_line(),
        "Error: etcdserver: user name is empty"
    );

    // root may do anything.
    assert_eq!(as_user(&s, ROOT, &["put", "other", "y"]).ok(), "OK\n");
    assert_eq!(as_user(&s, ROOT, &["get", "other"]).ok(), "other\ny\n");
    assert_eq!(as_user(&s, ROOT, &["user", "list"]).ok(), "root\nuser0\n");
    assert_eq!(as_user(&s, ROOT, &["role", "list"]).ok(), "role0\nroot\n");
    assert_eq!(
        as_user(&s, ROOT, &["role", "get", "role0"]).ok(),
        "Role role0\nKV Read:\n\tfoo\nKV Write:\n\tfoo\n"
    );
    assert_eq!(
        as_user(&s, ROOT, &["user", "get", "user0"]).ok(),
        "User: user0\nRoles: role0\n"
    );
    // A user may read its own record and its roles.
    assert_eq!(
        as_user(&s, USER0, &["user", "get", "user0"]).ok(),
        "User: user0\nRoles: role0\n"
    );

    // Revoking the permission takes effect at once.
    assert_eq!(
        as_user(&s, ROOT, &["role", "revoke-permission", "role0", "foo"]).ok(),
        "Permission of key foo is revoked from role role0\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, USER0, &["put", "foo", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );

    // A changed password voids the old one.
    assert_eq!(
        s.etcdctl_stdin(
            &[
                "--user",
                ROOT,
                "user",
                "passwd",
                "user0",
                "--interactive=false"
            ],
            "pw1\n"
        )
        .ok(),
        "Password updated\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );

    assert_eq!(
        as_user(&s, ROOT, &["auth", "disable"]).ok(),
        "Authentication Disabled\n"
    );
    assert_eq!(s.etcdctl(&["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        s.etcdctl(&["user", "list"]).ok(),
        "root\nuser0\n",
        "users survive disabling"
    );
}

#[test]
fn auth_survives_a_restart() {
    let mut s = Server::start_with_args(&["--bcrypt-cost", "4"]);
    s.etcdctl(&["user", "add", ROOT]).ok();
    s.etcdctl(&["user", "grant-role", "root", "root"]).ok();
    s.etcdctl(&["user", "add", USER0]).ok();
    s.etcdctl(&["auth", "enable"]).ok();
    s.restart();
    assert_eq!(
        s.etcdctl(&["get", "foo"]).err_line(),
        "Error: etcdserver: user name is empty"
    );
    assert_eq!(
        as_user(&s, USER0, &["put", "foo", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(as_user(&s, ROOT, &["put", "foo", "x"]).ok(), "OK\n");
}
