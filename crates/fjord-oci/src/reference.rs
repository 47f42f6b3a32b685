//! Image references, normalised exactly as Docker does (`distribution/reference`'s
//! `ParseNormalizedNamed` followed by `TagNameOnly`).

use std::fmt;

/// Docker Hub, as references name it.
pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;

/// An image reference: `registry/repository[:tag][@digest]`, normalised (`busybox` is
/// `docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("the image name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("the repository name {0:?} must be lowercase")]
    Uppercase(String),
    #[error(
        "the repository path component {0:?} is invalid: lowercase letters and digits separated by `.`, `_`, `__` or dashes"
    )]
    InvalidPathComponent(String),
    #[error("the registry host {0:?} is invalid")]
    InvalidRegistry(String),
    #[error(
        "the tag {0:?} is invalid: up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
    )]
    InvalidTag(String),
    #[error(
        "the digest {0:?} is invalid: expected sha256: and 64 lowercase hex digits (or sha512: and 128)"
    )]
    InvalidDigest(String),
    #[error(
        "{0:?} looks like an image ID (64 hex digits), not a name: use `name@sha256:<hex>` to pin a digest"
    )]
    LooksLikeId(String),
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, d)) => {
                check_digest(d)?;
                (name, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last `:` that follows the last `/` (a port's `:` comes before).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(t) = tag {
            check_tag(t)?;
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReferenceError::LooksLikeId(name.to_string()));
        }
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.to_lowercase() != first =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == LEGACY_HUB {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("{OFFICIAL_PREFIX}{repository}");
        }
        check_registry(&registry)?;
        if repository.to_lowercase() != repository {
            return Err(ReferenceError::Uppercase(repository));
        }
        for c in repository.split('/') {
            check_path_component(c)?;
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`, …
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `library/busybox`, `user/repo`, …
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<hex>` when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The registry host without its port, for the loopback check.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }

    /// The same image by digest (`registry/repository@digest`).
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// Another tag of the same repository (`sha256-H.sig`, where cosign keeps signatures).
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// `registry/repository:tag` without the digest: what a tag record is kept under.
    pub(crate) fn tag_key(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}/{}:{t}", self.registry, self.repository))
    }

    pub(crate) fn to_client(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
            ),
            (None, None) => unreachable!("parse gives a tag or a digest"),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// `sha256:` + 64 lowercase hex, or `sha512:` + 128 (the algorithms the image spec registers).
pub(crate) fn check_digest(d: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidDigest(d.chars().take(140).collect());
    let (alg, hex) = d.split_once(':').ok_or_else(bad)?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), ReferenceError> {
    let b = t.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if b.is_empty()
        || b.len() > 128
        || !word(b[0])
        || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
    {
        return Err(ReferenceError::InvalidTag(t.chars().take(140).collect()));
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(c: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidPathComponent(c.to_string());
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `host[:port]`: DNS labels joined by dots, or an IPv6 address in brackets.
fn check_registry(r: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidRegistry(r.to_string());
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    if let Some(h) = host {
        for label in h.split('.') {
            let b = label.as_bytes();
            if b.is_empty()
                || !b[0].is_ascii_alphanumeric()
                || !b[b.len() - 1].is_ascii_alphanumeric()
                || !b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            {
                return Err(bad());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582";

    #[test]
    fn normalises_like_docker() {
        let d = D;
        // (input, registry, repository, tag, digest)
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            // Docker's own examples (distribution/reference normalize_test.go).
            (
                "busybox",
                DOCKER_HUB,
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "ubuntu:20.04",
                DOCKER_HUB,
                "library/ubuntu",
                Some("20.04"),
                None,
            ),
            (
                "docker/docker",
                DOCKER_HUB,
                "docker/docker",
                Some("latest"),
                None,
            ),
            (
                "docker.io/library/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/library/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Some("latest"),
                None,
            ),
            (
                "docker.io/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Some("latest"),
                None,
            ),
            ("user/repo", DOCKER_HUB, "user/repo", Some("latest"), None),
            (
                "user/repo/sub",
                DOCKER_HUB,
                "user/repo/sub",
                Some("latest"),
                None,
            ),
            ("host:5000/repo:tag", "host:5000", "repo", Some("tag"), None),
            ("host:5000/repo", "host:5000", "repo", Some("latest"), None),
            ("localhost/repo", "localhost", "repo", Some("latest"), None),
            (
                "localhost:5000/a/b:1.0",
                "localhost:5000",
                "a/b",
                Some("1.0"),
                None,
            ),
            ("ghcr.io/o/r:v1", "ghcr.io", "o/r", Some("v1"), None),
            (
                "127.0.0.1:5000/fn",
                "127.0.0.1:5000",
                "fn",
                Some("latest"),
                None,
            ),
            ("[::1]:5000/fn", "[::1]:5000", "fn", Some("latest"), None),
            (
                "a.com/b-c_d__e---f.g/x",
                "a.com",
                "b-c_d__e---f.g/x",
                Some("latest"),
                None,
            ),
        ];
        for &(input, reg, repo, tag, digest) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (r.registry(), r.repository(), r.tag(), r.digest()),
                (reg, repo, tag, digest),
                "{input}"
            );
        }
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(r.tag(), None);
        let r = Reference::parse(&format!("host:5000/repo:tag@{d}")).unwrap();
        assert_eq!(r.to_string(), format!("host:5000/repo:tag@{d}"));
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.digest(), Some(d));
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(Reference::parse("[::1]:5000/fn").unwrap().host(), "::1");
        assert_eq!(Reference::parse("host:5000/r").unwrap().host(), "host");
    }

    #[test]
    fn refuses_with_reasons() {
        use ReferenceError::*;
        let long = format!("{}/x", "a".repeat(300));
        let cases: Vec<(&str, ReferenceError)> = vec![
            ("", Empty),
            (":tag", Empty),
            ("Busybox", Uppercase("library/Busybox".into())),
            ("docker.io/User/repo", Uppercase("User/repo".into())),
            ("repo:-bad", InvalidTag("-bad".into())),
            ("repo:", InvalidTag("".into())),
            ("repo:a/b", InvalidRegistry("repo:a".into())),
            (
                "foo_bar.com:8080/x",
                InvalidRegistry("foo_bar.com:8080".into()),
            ),
            ("repo@sha256:abc", InvalidDigest("sha256:abc".into())),
            ("repo@md5:abc", InvalidDigest("md5:abc".into())),
            ("a//b", InvalidPathComponent("".into())),
            ("a/-b", InvalidPathComponent("-b".into())),
            ("a/b.", InvalidPathComponent("b.".into())),
            ("a/b..c", InvalidPathComponent("b..c".into())),
            ("a/b___c", InvalidPathComponent("b___c".into())),
            ("-host.com/x", InvalidRegistry("-host.com".into())),
            ("host:port/x", InvalidRegistry("host:port".into())),
            ("[zz]:5000/x", InvalidRegistry("[zz]:5000".into())),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input), Err(want), "{input:?}");
        }
        assert_eq!(Reference::parse(&long), Err(NameTooLong));
        let id = "e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582";
        assert_eq!(Reference::parse(id), Err(LooksLikeId(id.into())));
        // Messages name the reason.
        let e = Reference::parse("Busybox").unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
    }
}
