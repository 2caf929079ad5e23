//! Why a query was refused, and where in its text (line and column from 1, when known).

use datafusion_common::DataFusionError;
use datafusion_sql::sqlparser::parser::ParserError;
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct SqlError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> Self {
        SqlError { message: message.into(), line: None, column: None }
    }

    fn at(mut self, line: u64, column: u64) -> Self {
        // sqlparser uses line 0 for "no position".
        if line > 0 {
            (self.line, self.column) = (Some(line), Some(column));
        }
        self
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl From<ParserError> for SqlError {
    fn from(e: ParserError) -> Self {
        let text = match e {
            ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
            ParserError::RecursionLimitExceeded => "is nested too deeply".to_owned(),
        };
        // sqlparser ends its messages with " at Line: L, Column: C".
        if let Some((message, place)) = text.rsplit_once(" at Line: ") {
            if let Some((l, c)) = place.split_once(", Column: ") {
                if let (Ok(l), Ok(c)) = (l.trim().parse(), c.trim().parse()) {
                    return SqlError::new(message).at(l, c);
                }
            }
        }
        SqlError::new(text)
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        if let Some(d) = e.diagnostic() {
            let err = SqlError::new(&d.message);
            return match d.span {
                Some(span) => err.at(span.start.line, span.start.column),
                None => err,
            };
        }
        // The innermost error, without DataFusion's "Error during planning: " style prefixes.
        let inner = e.iter().last().unwrap_or(&e);
        let text = match inner {
            DataFusionError::Plan(s) | DataFusionError::Execution(s) | DataFusionError::NotImplemented(s) => s.clone(),
            DataFusionError::SQL(p, _) => return SqlError::from(p.as_ref().clone()),
            other => other.strip_backtrace(),
        };
        SqlError::new(text)
    }
}
