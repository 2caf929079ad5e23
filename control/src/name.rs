//! Object names: the identifiers users type and that later become topic and job names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name accepted: a DNS label, so a name can become a Kafka topic, a consumer group or a
/// host name without escaping.
pub const MAX_NAME_LEN: usize = 63;

/// A validated object name: lowercase ASCII letters, digits and single dashes, starting with a
/// letter, 1 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("must be at most {MAX_NAME_LEN} characters (got {0})")]
    TooLong(usize),
    /// The first character is not a lowercase letter.
    #[error("must start with a lowercase letter")]
    BadStart,
    /// A character outside `a-z`, `0-9` and `-`.
    #[error("may only contain lowercase letters, digits and dashes (found {0:?})")]
    BadChar(char),
    /// Ends with a dash or has two dashes in a row.
    #[error("must not end with a dash or contain two dashes in a row")]
    BadDash,
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        let first = s.chars().next().ok_or(NameError::Empty)?;
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadStart);
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(NameError::BadChar(c));
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(NameError::BadDash);
        }
        Ok(Name(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::parse(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_label_style_names() {
        for ok in ["a", "plays", "play-events-v2", &"a".repeat(63)] {
            assert_eq!(Name::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse(&"a".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(Name::parse("1abc"), Err(NameError::BadStart));
        assert_eq!(Name::parse("-abc"), Err(NameError::BadStart));
        assert_eq!(Name::parse("Plays"), Err(NameError::BadStart));
        assert_eq!(Name::parse("plays_v2"), Err(NameError::BadChar('_')));
        assert_eq!(Name::parse("plAys"), Err(NameError::BadChar('A')));
        assert_eq!(Name::parse("plays-"), Err(NameError::BadDash));
        assert_eq!(Name::parse("pl--ays"), Err(NameError::BadDash));
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Name>("\"ok-name\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"Bad Name\"").is_err());
    }
}
