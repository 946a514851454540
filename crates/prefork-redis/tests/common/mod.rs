//! What the Redis test binaries share: finding the server, and deciding
//! between failing and skipping when there is none.

#![allow(dead_code)]

/// The server's URL from `PREFORK_REDIS_URL`. Without it: under CI (`CI`
/// set, or `PREFORK_REQUIRE_BROKERS=1`) a failure (exit 1); elsewhere the
/// process prints why it skips and exits 0.
pub(crate) fn url_or_skip(what: &str) -> String {
    if let Ok(url) = std::env::var("PREFORK_REDIS_URL") {
        return url;
    }
    let required = std::env::var_os("CI").is_some()
        || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
    if required {
        eprintln!(
            "{what}: PREFORK_REDIS_URL is not set, and brokers are required here \
             (CI or PREFORK_REQUIRE_BROKERS=1): failing. Run `cargo xtask brokers start`."
        );
        std::process::exit(1);
    }
    println!(
        "{what}: SKIPPED: PREFORK_REDIS_URL is not set (start a server with \
         `cargo xtask brokers start` and source target/brokers.env)"
    );
    std::process::exit(0);
}

/// The URL, for code that runs after `url_or_skip` accepted it.
pub(crate) fn url() -> String {
    std::env::var("PREFORK_REDIS_URL").expect("PREFORK_REDIS_URL")
}
