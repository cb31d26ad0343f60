//! How a configuration problem is told before it gets its file and line: the key and the message, with a
//! "did you mean" for near misses.

/// A problem found while validating: the key path, and what is wrong.
pub type Invalid = (String, String);

/// Appends "did you mean `x`?" when one of `candidates` is close to `given`.
pub fn with_suggestion(message: &str, given: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(given, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, suggestion)) => format!("{message}; did you mean `{suggestion}`?"),
        None => message.to_owned(),
    }
}
