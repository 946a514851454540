//! Redis URLs with their secrets hidden, for logs, `Debug` and errors.

/// `url` with any password (the userinfo after `user:`, a bare userinfo,
/// a `password`/`pass` query value) replaced by `***`: the form of a Redis
/// URL that [`Redis`](crate::Redis)'s `Debug`, [`url`](crate::Redis::url)
/// and error messages show. It parses nothing, so it also hides the
/// password of a URL too malformed to open.
///
/// Everything before the last `@` is taken as userinfo: an `@` elsewhere
/// (a query value) only makes it hide more than it needs to.
///
/// # Examples
///
/// ```
/// use prefork_redis::redact_url;
///
/// assert_eq!(redact_url("redis://:s3cret@10.0.0.1:6379/2"), "redis://:***@10.0.0.1:6379/2");
/// assert_eq!(redact_url("redis://alice:s3cret@h/0"), "redis://alice:***@h/0");
/// assert_eq!(
///     redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret"),
///     "redis+unix:///run/r.sock?db=1&pass=***"
/// );
/// assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if let Some(info) = userinfo {
        match info.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            None if info.is_empty() => out.push('@'),
            None => out.push_str("***@"),
        }
    }
    match after.split_once('?') {
        None => out.push_str(after),
        Some((head, query)) => {
            out.push_str(head);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
                    {
                        out.push_str(k);
                        out.push_str("=***");
                    }
                    _ => out.push_str(pair),
                }
            }
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;
    use proptest::prelude::*;

    #[test]
    fn hides_passwords_keeps_the_rest() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://:s3cret@h:1/0", "redis://:***@h:1/0"),
            ("redis://alice:s3cret@h:1/0", "redis://alice:***@h:1/0"),
            ("redis://s3cret@h", "redis://***@h"),
            ("redis://al:p@ss@w0rd@h/2", "redis://al:***@h/2"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "rediss://u:pw@h:6380/#insecure",
                "rediss://u:***@h:6380/#insecure",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    proptest! {
        #[test]
        fn the_password_never_survives(user in "[a-z]{0,6}", pw in "[!-~]{6,24}", host in "[a-z]{1,8}", port in 1u16..) {
            let url = format!("redis://{user}:{pw}@{host}:{port}/0");
            let r = redact(&url);
            prop_assert!(!r.contains(&pw), "{} kept {}", r, pw);
            let want = format!("{host}:{port}/0");
            prop_assert!(r.ends_with(&want), "{}", r);
        }
    }
}
