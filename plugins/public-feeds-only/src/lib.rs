//! Skips `new_feed_entry` events of feeds that are not public (where the format
//! says: only the documented format carries `is_public`) and of feeds whose title
//! matches one of the patterns in config key `exclude_titles`. Every other event
//! is delivered unchanged.
//!
//! `exclude_titles` is a comma-separated list of case-insensitive patterns where
//! `*` matches any run of characters and `?` any one: `"Internal*, *draft*"`.

use hookwasm_plugin::{Client, ClientExt, Error, Event, EventExt, Plugin, Verdict};

struct PublicFeedsOnly;

impl Plugin for PublicFeedsOnly {
    fn handle(event: Event, client: Client) -> Result<Verdict, Error> {
        if let Some(entry) = event.new_feed_entry() {
            if entry.feed.is_public == Some(false) {
                return Ok(hookwasm_plugin::skip(format!(
                    "feed {:?} is not public",
                    entry.feed.title
                )));
            }
            let patterns = client.get_or("exclude_titles", "");
            for pattern in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if glob_match(&pattern.to_lowercase(), &entry.feed.title.to_lowercase()) {
                    return Ok(hookwasm_plugin::skip(format!(
                        "feed {:?} matches exclude_titles pattern {pattern:?}",
                        entry.feed.title
                    )));
                }
            }
        }
        Ok(hookwasm_plugin::deliver(event.json.into_bytes(), None))
    }
}

/// `*` matches any run of characters, `?` exactly one; the rest literally.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last star.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

hookwasm_plugin::export!(PublicFeedsOnly);

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("internal*", "internal news"));
        assert!(glob_match("*draft*", "a draft feed"));
        assert!(glob_match("c?nnes*", "cannes festival"));
        assert!(!glob_match("internal*", "the internal news"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", ""));
    }
}
