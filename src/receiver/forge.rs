//! Each forge's push event: how it is authenticated (HMAC of the raw body, or GitLab's token
//! compared in constant time) and what it says (repository URLs and refs), read into small
//! typed structs so a malformed body is an error and never a panic. Pure: no IO.

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::config::HookKind;
use crate::signing;

/// What a verified request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The forge testing the hook (GitHub `ping`, Bitbucket Server `diagnostics:ping`).
    Ping,
    /// An event that is not a push (an issue, a tag push): nothing to do.
    NotAPush(String),
    /// A push: the repository's URLs and the refs it moved.
    Push(Push),
    /// A `generic-hmac` request: fetch, whatever the body.
    Any,
}

/// The parts of a push event gitopsd reads. Never a commit id: the fetch finds the tip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub urls: Vec<String>,
    /// Bitbucket Server's project key and repository slug.
    pub project_slug: Option<(String, String)>,
    /// Full ref names (`refs/heads/main`).
    pub refs: Vec<String>,
}

/// Why a verified body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `sha256=<hex>` in `name`, checked against the body.
fn prefixed_hmac(headers: &HeaderMap, name: &str, secret: &[u8], body: &[u8]) -> bool {
    header(headers, name)
        .and_then(|value| value.trim().strip_prefix("sha256="))
        .is_some_and(|hex| signing::verify_hex(secret, body, hex))
}

/// Whether the request carries `kind`'s proof that it comes from the holder of `secret`.
pub fn authentic(kind: HookKind, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    match kind {
        HookKind::Github => prefixed_hmac(headers, "x-hub-signature-256", secret, body),
        HookKind::BitbucketServer => prefixed_hmac(headers, "x-hub-signature", secret, body),
        HookKind::GenericHmac => prefixed_hmac(headers, "x-signature", secret, body),
        HookKind::Gitea => [
            "x-gitea-signature",
            "x-forgejo-signature",
            "x-gogs-signature",
        ]
        .iter()
        .find_map(|name| header(headers, name))
        .is_some_and(|hex| signing::verify_hex(secret, body, hex)),
        HookKind::Gitlab => header(headers, "x-gitlab-token")
            .is_some_and(|token| signing::same(token.as_bytes(), secret)),
    }
}

/// What an authenticated request of `kind` asks for.
pub fn interpret(kind: HookKind, headers: &HeaderMap, body: &[u8]) -> Result<Hint, Malformed> {
    match kind {
        HookKind::GenericHmac => Ok(Hint::Any),
        HookKind::Github => match header(headers, "x-github-event") {
            Some("ping") => Ok(Hint::Ping),
            Some("push") => github_push(body),
            other => Ok(not_a_push(other)),
        },
        HookKind::Gitea => {
            let event = ["x-gitea-event", "x-forgejo-event", "x-gogs-event"]
                .iter()
                .find_map(|name| header(headers, name));
            match event {
                Some("push") => gitea_push(body),
                other => Ok(not_a_push(other)),
            }
        }
        HookKind::Gitlab => match header(headers, "x-gitlab-event") {
            Some("Push Hook") => gitlab_push(body),
            other => Ok(not_a_push(other)),
        },
        HookKind::BitbucketServer => match header(headers, "x-event-key") {
            Some("diagnostics:ping") => Ok(Hint::Ping),
            Some("repo:refs_changed") => bitbucket_push(body),
            other => Ok(not_a_push(other)),
        },
    }
}

fn not_a_push(event: Option<&str>) -> Hint {
    let event: String = event
        .unwrap_or("no event header")
        .chars()
        .take(64)
        .collect();
    Hint::NotAPush(event)
}

/// Deepest nesting of arrays and objects a push event may have (the forges' own go 4 deep).
pub const MAX_DEPTH: usize = 32;
/// Most items an array in a push event may hold (GitHub and GitLab list at most 20 commits).
pub const MAX_ARRAY: usize = 10_000;

/// Refuses JSON text nested deeper than [`MAX_DEPTH`] or with an array longer than
/// [`MAX_ARRAY`], anywhere in it, including the fields gitopsd does not read. A scan of the
/// raw bytes that skips strings; it checks no other syntax (the parser does).
pub fn check_shape(body: &[u8]) -> Result<(), Malformed> {
    // Per open bracket: whether it is an array, and the commas seen at its level.
    let mut open: Vec<(bool, usize)> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                if open.len() == MAX_DEPTH {
                    return Err(Malformed(format!(
                        "invalid push event: nested deeper than {MAX_DEPTH} levels"
                    )));
                }
                open.push((byte == b'[', 0));
            }
            b']' | b'}' => {
                open.pop();
            }
            b',' => {
                if let Some((true, commas)) = open.last_mut() {
                    *commas += 1;
                    if *commas >= MAX_ARRAY {
                        return Err(Malformed(format!(
                            "invalid push event: an array of more than {MAX_ARRAY} items"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The body as JSON of type `T`, once its shape passes [`check_shape`].
fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Malformed> {
    check_shape(body)?;
    serde_json::from_slice(body).map_err(|error| Malformed(format!("invalid push event: {error}")))
}

fn urls(candidates: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    candidates.into_iter().flatten().collect()
}

/// GitHub's and Gitea's repository object.
#[derive(Deserialize)]
struct HubRepository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    html_url: Option<String>,
}

#[derive(Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    reference: String,
    repository: HubRepository,
}

fn hub_push(body: &[u8]) -> Result<Hint, Malformed> {
    let push: HubPush = json(body)?;
    let repository = push.repository;
    Ok(Hint::Push(Push {
        urls: urls([
            repository.clone_url,
            repository.ssh_url,
            repository.git_url,
            repository.html_url,
        ]),
        project_slug: None,
        refs: vec![push.reference],
    }))
}

fn github_push(body: &[u8]) -> Result<Hint, Malformed> {
    if body.first() != Some(&b'{') && body.starts_with(b"payload=") {
        return Err(Malformed(
            "form-encoded events are not read: set the hook's content type to application/json"
                .into(),
        ));
    }
    hub_push(body)
}

fn gitea_push(body: &[u8]) -> Result<Hint, Malformed> {
    hub_push(body)
}

#[derive(Deserialize)]
struct GitlabProject {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct GitlabRepository {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    homepage: Option<String>,
}

#[derive(Deserialize)]
struct GitlabPush {
    #[serde(rename = "ref")]
    reference: String,
    project: Option<GitlabProject>,
    repository: Option<GitlabRepository>,
}

fn gitlab_push(body: &[u8]) -> Result<Hint, Malformed> {
    let push: GitlabPush = json(body)?;
    let mut found = Vec::new();
    if let Some(project) = push.project {
        found.extend(urls([
            project.git_http_url,
            project.git_ssh_url,
            project.web_url,
        ]));
    }
    if let Some(repository) = push.repository {
        found.extend(urls([
            repository.git_http_url,
            repository.git_ssh_url,
            repository.homepage,
        ]));
    }
    if found.is_empty() {
        return Err(Malformed(
            "invalid push event: neither project nor repository names a URL".into(),
        ));
    }
    Ok(Hint::Push(Push {
        urls: found,
        project_slug: None,
        refs: vec![push.reference],
    }))
}

#[derive(Deserialize)]
struct BitbucketRef {
    id: String,
}

#[derive(Deserialize)]
struct BitbucketChange {
    #[serde(rename = "ref")]
    reference: Option<BitbucketRef>,
    #[serde(rename = "refId")]
    ref_id: Option<String>,
}

#[derive(Deserialize)]
struct BitbucketProject {
    key: String,
}

#[derive(Deserialize)]
struct BitbucketLink {
    href: String,
}

#[derive(Deserialize, Default)]
struct BitbucketLinks {
    #[serde(default)]
    clone: Vec<BitbucketLink>,
}

#[derive(Deserialize)]
struct BitbucketRepository {
    slug: String,
    project: BitbucketProject,
    #[serde(default)]
    links: BitbucketLinks,
}

#[derive(Deserialize)]
struct BitbucketPush {
    repository: BitbucketRepository,
    changes: Vec<BitbucketChange>,
}

fn bitbucket_push(body: &[u8]) -> Result<Hint, Malformed> {
    let push: BitbucketPush = json(body)?;
    let refs = push
        .changes
        .into_iter()
        .filter_map(|change| change.ref_id.or(change.reference.map(|r| r.id)))
        .collect();
    let repository = push.repository;
    Ok(Hint::Push(Push {
        urls: repository.links.clone.into_iter().map(|l| l.href).collect(),
        project_slug: Some((repository.project.key, repository.slug)),
        refs,
    }))
}

/// What to do about a hint, for the configured repository and branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ping,
    Fetch,
    /// Not about this repository and branch: answered 202, no fetch.
    Ignore(String),
}

/// Pure: whether `hint` concerns `repo_url` at `branch`.
pub fn verdict(hint: Hint, repo_url: &str, branch: &str) -> Verdict {
    let push = match hint {
        Hint::Ping => return Verdict::Ping,
        Hint::Any => return Verdict::Fetch,
        Hint::NotAPush(event) => return Verdict::Ignore(format!("not a push event ({event})")),
        Hint::Push(push) => push,
    };
    let same_url = push
        .urls
        .iter()
        .any(|url| super::url::same_repository(repo_url, url));
    let same_slug = push
        .project_slug
        .as_ref()
        .is_some_and(|(project, slug)| super::url::ends_with_project_slug(repo_url, project, slug));
    if !same_url && !same_slug {
        return Verdict::Ignore("another repository".into());
    }
    let wanted = format!("refs/heads/{branch}");
    if push.refs.contains(&wanted) {
        Verdict::Fetch
    } else if push.refs.iter().all(|r| r.starts_with("refs/tags/")) && !push.refs.is_empty() {
        Verdict::Ignore("a tag".into())
    } else {
        Verdict::Ignore("another branch".into())
    }
}

#[cfg(test)]
#[path = "forge_tests.rs"]
mod tests;
