//! Tokens to units (all tokens, tokens, words, sentences) with character spans.

use std::str::FromStr;

use crate::{CoreError, Result};

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    AllTokens,
    Token,
    Word,
    Sentence,
}

impl FromStr for Granularity {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all_tokens" => Ok(Self::AllTokens),
            "token" => Ok(Self::Token),
            "word" => Ok(Self::Word),
            "sentence" => Ok(Self::Sentence),
            _ => Err(CoreError::UnknownStrategy {
                kind: "granularity",
                name: s.to_owned(),
                expected: "all_tokens, token, word, sentence",
            }),
        }
    }
}

/// The token -> unit map (-1 = no unit) and each unit's character span (end exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub token_to_unit: Vec<i64>,
    pub spans: Vec<(usize, usize)>,
}

/// Groups the tokens of one input.
pub fn group(
    granularity: Granularity,
    special: &[bool],
    offsets: &[(usize, usize)],
    word_ids: Option<&[i64]>,
    text: &str,
) -> Result<Grouping> {
    let _ = (granularity, special, offsets, word_ids, text);
    todo!()
}

/// Sentence spans of `text` (character indices, trimmed of surrounding whitespace).
#[must_use]
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let _ = text;
    todo!()
}
