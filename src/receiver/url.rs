//! Whether a repository URL from a push event names the configured repository: the same host
//! (any case) and path, whatever the scheme (https, ssh, git, scp-like `git@host:path`), user
//! info, port and trailing `.git`.

/// A repository URL reduced to what identifies the repository: lowercase host and path,
/// without scheme, user info, port, surrounding slashes or `.git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoKey {
    pub host: String,
    pub path: String,
}

/// The key of `url`, or `None` when it names no repository (empty, no path).
pub fn key(url: &str) -> Option<RepoKey> {
    let url = url.trim();
    let (authority, path) = if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") {
            ("", rest)
        } else {
            rest.split_once('/').unwrap_or((rest, ""))
        }
    } else if let Some((authority, path)) = scp_like(url) {
        (authority, path)
    } else {
        // A local path.
        ("", url)
    };
    let host = host_of(authority).to_ascii_lowercase();
    let path = path.trim_matches('/');
    let path = strip_suffix_ignore_case(path, ".git")
        .unwrap_or(path)
        .trim_end_matches('/')
        .to_lowercase();
    (!path.is_empty()).then_some(RepoKey { host, path })
}

/// `[user@]host:path` with no `/` before the colon, git's shorthand for ssh.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let (authority, path) = url.split_once(':')?;
    (!authority.is_empty() && !authority.contains('/')).then_some((authority, path))
}

/// The host of `[user[:password]@]host[:port]`, IPv6 literals included.
fn host_of(authority: &str) -> &str {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed
            .split_once(']')
            .map_or(bracketed, |(host, _)| host);
    }
    host_port
        .split_once(':')
        .map_or(host_port, |(host, _)| host)
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let tail = text.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &text[..cut])
}

/// Whether `candidate` names the same repository as `configured`.
pub fn same_repository(configured: &str, candidate: &str) -> bool {
    matches!((key(configured), key(candidate)), (Some(a), Some(b)) if a == b)
}

/// Whether the configured repository's path ends in `project/slug` (Bitbucket Server names a
/// repository by project key and slug; its clone URLs put `scm/` before them over https).
pub fn ends_with_project_slug(configured: &str, project: &str, slug: &str) -> bool {
    let Some(configured) = key(configured) else {
        return false;
    };
    let wanted = format!("{}/{}", project.to_lowercase(), slug.to_lowercase());
    configured.path == wanted || configured.path.ends_with(&format!("/{wanted}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_spelling_of_one_repository_matches() {
        let configured = "https://github.com/Ops/Deploy.git";
        for candidate in [
            "https://github.com/ops/deploy",
            "https://GitHub.com/Ops/Deploy/",
            "https://x-access-token:secret@github.com:443/Ops/Deploy.git",
            "ssh://git@github.com/Ops/Deploy.git",
            "ssh://git@github.com:22/Ops/Deploy",
            "git@github.com:Ops/Deploy.git",
            "github.com:Ops/Deploy",
            "git://github.com/Ops/Deploy.git",
            "http://github.com/Ops/Deploy.GIT",
        ] {
            assert!(same_repository(configured, candidate), "{candidate}");
        }
        for other in [
            "https://github.com/Ops/Deploy2.git",
            "https://github.com/Other/Deploy.git",
            "https://gitlab.com/Ops/Deploy.git",
            "git@github.com:Ops/Deploy/sub.git",
            "https://github.com/",
            "",
        ] {
            assert!(!same_repository(configured, other), "{other}");
        }
    }

    #[test]
    fn ipv6_hosts_and_local_paths_have_keys() {
        assert_eq!(
            key("ssh://git@[::1]:2222/ops/deploy.git"),
            Some(RepoKey {
                host: "::1".into(),
                path: "ops/deploy".into()
            })
        );
        assert!(same_repository(
            "/srv/git/deploy.git",
            "file:///srv/git/deploy"
        ));
        assert!(!same_repository(
            "/srv/git/deploy.git",
            "https://srv/git/deploy"
        ));
    }

    #[test]
    fn bitbucket_server_repositories_are_named_by_project_and_slug() {
        for configured in [
            "https://bitbucket.example.com/scm/OPS/deploy.git",
            "ssh://git@bitbucket.example.com:7999/ops/deploy.git",
        ] {
            assert!(ends_with_project_slug(configured, "OPS", "deploy"));
            assert!(!ends_with_project_slug(configured, "OPS", "deploy2"));
            assert!(!ends_with_project_slug(configured, "DEV", "deploy"));
        }
        assert!(!ends_with_project_slug(
            "https://x/scm/xops/deploy",
            "ops",
            "deploy"
        ));
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,11}".prop_filter("not .git itself", |s| {
            !s.to_ascii_lowercase().ends_with(".git") && !s.ends_with('.')
        })
    }

    proptest! {
        /// Any spelling of host/owner/name matches any other; another name never does.
        #[test]
        fn spellings_match_and_other_names_do_not(
            host in "[a-z][a-z0-9-]{0,15}(\\.[a-z]{2,5}){1,2}",
            owner in segment(),
            name in segment(),
            other in segment(),
            port in 1u16..,
            user in "[a-z][a-z0-9_-]{0,8}",
            spelling_a in 0usize..6,
            spelling_b in 0usize..6,
        ) {
            let spell = |spelling: usize, host: &str, path: &str| match spelling {
                0 => format!("https://{host}/{path}.git"),
                1 => format!("https://{user}:token@{}:{port}/{path}", host.to_uppercase()),
                2 => format!("ssh://{user}@{host}:{port}/{path}.git"),
                3 => format!("{user}@{host}:{path}.git"),
                4 => format!("git://{host}/{path}/"),
                _ => format!("http://{host}:{port}/{path}.GIT"),
            };
            let path = format!("{owner}/{name}");
            prop_assert!(same_repository(&spell(spelling_a, &host, &path), &spell(spelling_b, &host, &path)));
            if !other.eq_ignore_ascii_case(&name) {
                let elsewhere = format!("{owner}/{other}");
                prop_assert!(!same_repository(&spell(spelling_a, &host, &path), &spell(spelling_b, &host, &elsewhere)));
            }
        }

        /// Whatever the text, finding a key never panics.
        #[test]
        fn any_text_is_handled(text in any::<String>()) {
            let _ = key(&text);
            let _ = ends_with_project_slug(&text, &text, &text);
        }
    }
}
