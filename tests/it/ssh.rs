//! Fetching over ssh with a key file and a known_hosts file, from a real `sshd` on 127.0.0.1
//! (Debian's openssh-server; tests/run.sh installs it), one `sshd -i` per connection.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::helpers::*;

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

/// sshd on 127.0.0.1 accepting only `client_key`, for the current user, at a port the system
/// picked: sshd cannot report a port it was given as 0, so it runs in inetd mode (`sshd -i`,
/// one process per connection) behind an [`InetdServer`].
struct Sshd {
    port: u16,
    _server: InetdServer,
}

impl Sshd {
    fn start(dir: &Path, client_public_key: &Path) -> Self {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.is_file(),
            "sshd is installed (Debian package `openssh-server`; tests/run.sh installs it)"
        );
        keygen(&dir.join("host_key"));
        fs::copy(client_public_key, dir.join("authorized_keys")).expect("authorized_keys");
        // sshd insists on its privilege separation folder.
        fs::create_dir_all("/run/sshd").expect("/run/sshd (the test runs as root)");
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "HostKey {dir}/host_key\nPidFile none\nAuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n",
                dir = dir.display()
            ),
        )
        .expect("sshd_config");
        let server = InetdServer::serve(move || {
            let mut command = Command::new(sshd);
            command.arg("-i").arg("-e").arg("-f").arg(&config);
            command
        });
        Self {
            port: server.port,
            _server: server,
        }
    }
}

#[test]
fn repository_is_fetched_over_ssh_with_a_key_and_known_hosts() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 3);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");

    let ssh_dir = workspace.path("ssh");
    fs::create_dir_all(&ssh_dir).expect("mkdir");
    let client_key = ssh_dir.join("client_key");
    keygen(&client_key);
    let sshd = Sshd::start(&ssh_dir, &ssh_dir.join("client_key.pub"));
    let host_key = fs::read_to_string(ssh_dir.join("host_key.pub")).expect("host key");
    let known_hosts = ssh_dir.join("known_hosts");
    fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {host_key}", sshd.port),
    )
    .expect("known_hosts");

    let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let url = format!(
        "ssh://{user}@127.0.0.1:{}{}",
        sshd.port,
        workspace.repo.dir.display()
    );
    let with_ssh = |known_hosts_file: &Path| {
        workspace.write_config(&url, "30s");
        workspace.add_repo_keys(&format!(
            "ssh_key_file = \"{}\"\nssh_known_hosts_file = \"{}\"",
            client_key.display(),
            known_hosts_file.display()
        ));
    };

    with_ssh(&known_hosts);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let deployment = fs::read_to_string(
        workspace
            .live("staging")
            .join("shop/Deployment.apps/web.yaml"),
    )
    .expect("reconciled over ssh");
    assert!(deployment.contains("replicas: 3"));

    // An unknown host key is refused rather than trusted on first use.
    let empty = ssh_dir.join("empty_known_hosts");
    fs::write(&empty, "").expect("known_hosts");
    with_ssh(&empty);
    write_environment(&workspace.repo, "staging", 4);
    workspace.repo.commit("four");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("fetch failed"),
        "{}",
        stderr(&output)
    );
}
