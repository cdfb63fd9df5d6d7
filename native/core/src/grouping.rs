//! Tokens to units (all tokens, tokens, words, sentences) with character spans.
//!
//! Offsets and spans are **character** (code point) indices into the text, end exclusive, as
//! Hugging Face fast tokenizers give them; the text is therefore indexed as a `Vec<char>`, never by
//! bytes.

use std::collections::HashMap;
use std::str::FromStr;

use crate::{CoreError, Result};

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Every token is its own unit, special tokens included.
    AllTokens,
    /// Every non-special token is its own unit.
    Token,
    /// Words: tokenizer word ids, or runs of non-whitespace characters of the text.
    Word,
    /// Sentences of the text.
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
    /// For each token, its unit (`0..u`, numbered in order of first token) or -1 for none.
    pub token_to_unit: Vec<i64>,
    /// For each unit, `(min start, max end)` of its tokens' non-empty offsets.
    pub spans: Vec<(usize, usize)>,
}

/// Groups the tokens of one input.
///
/// `special[i]` marks special tokens, `offsets[i]` is token `i`'s character span in `text`,
/// `word_ids[i]` its word (negative = none). See docs/native.md, "Grouping", for the exact rules.
pub fn group(
    granularity: Granularity,
    special: &[bool],
    offsets: &[(usize, usize)],
    word_ids: Option<&[i64]>,
    text: &str,
) -> Result<Grouping> {
    let n = special.len();
    if offsets.len() != n {
        return Err(CoreError::Shape(format!(
            "special_mask has {n} tokens but offsets has {}",
            offsets.len()
        )));
    }
    if let Some(ids) = word_ids {
        if ids.len() != n {
            return Err(CoreError::Shape(format!(
                "special_mask has {n} tokens but word_ids has {}",
                ids.len()
            )));
        }
    }
    let chars: Vec<char> = text.chars().collect();
    for (i, &(s, e)) in offsets.iter().enumerate() {
        if s > e {
            return Err(CoreError::IdOutOfRange(format!(
                "token {i} has offset ({s}, {e}) with start > end"
            )));
        }
        if e > chars.len() {
            return Err(CoreError::IdOutOfRange(format!(
                "token {i} has offset ({s}, {e}) beyond the text of {} characters",
                chars.len()
            )));
        }
    }

    let token_to_unit = match granularity {
        Granularity::AllTokens => (0..n as i64).collect(),
        Granularity::Token => {
            let mut next = 0;
            special
                .iter()
                .map(|&sp| {
                    if sp {
                        -1
                    } else {
                        next += 1;
                        next - 1
                    }
                })
                .collect()
        }
        Granularity::Word => {
            if let Some(ids) = word_ids {
                by_word_ids(special, ids)
            } else {
                let runs = non_whitespace_runs(&chars);
                by_segments(
                    special,
                    offsets,
                    &chars,
                    &segment_of_char(chars.len(), &runs),
                )
            }
        }
        Granularity::Sentence => {
            let sentences = sentence_spans_of(&chars);
            by_segments(
                special,
                offsets,
                &chars,
                &segment_of_char(chars.len(), &sentences),
            )
        }
    };
    let spans = unit_spans(&token_to_unit, offsets);
    Ok(Grouping {
        token_to_unit,
        spans,
    })
}

/// Sentence spans of `text` (character indices, trimmed of surrounding whitespace).
///
/// A sentence ends after `.`, `?` or `!` (or a run of them, possibly followed by closing quotes or
/// brackets) followed by whitespace, except after common abbreviations and single-letter
/// initials. Empty or whitespace-only text has no sentences.
#[must_use]
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    sentence_spans_of(&chars)
}

/// Abbreviations after which a single `.` does not end a sentence (compared in lower case).
const ABBREVIATIONS: &[&str] = &[
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "inc.", "ltd.", "co.", "no.", "fig.",
];

fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '?' | '!')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '\u{201D}' | '\u{2019}' | ')' | ']')
}

/// Whether the single `.` at `dot` ends an abbreviation or an initial rather than a sentence.
fn is_abbreviation(chars: &[char], dot: usize) -> bool {
    let mut start = dot;
    while start > 0 && !chars[start - 1].is_whitespace() {
        start -= 1;
    }
    // Opening quotes and brackets before the word do not belong to it: "(Dr." is "Dr.".
    while start < dot && !chars[start].is_alphanumeric() {
        start += 1;
    }
    let word = &chars[start..=dot];
    if word.len() == 2 && word[0].is_uppercase() {
        return true;
    }
    let lower: String = word.iter().flat_map(|c| c.to_lowercase()).collect();
    ABBREVIATIONS.contains(&lower.as_str())
}

fn sentence_spans_of(chars: &[char]) -> Vec<(usize, usize)> {
    let n = chars.len();
    let mut spans = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < n {
        if !is_terminal(chars[i]) {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < n && is_terminal(chars[i]) {
            i += 1;
        }
        let single_dot = i - run_start == 1 && chars[run_start] == '.';
        while i < n && is_closer(chars[i]) {
            i += 1;
        }
        if i < n && chars[i].is_whitespace() && !(single_dot && is_abbreviation(chars, run_start)) {
            push_trimmed(chars, start, i, &mut spans);
            start = i;
        }
    }
    push_trimmed(chars, start, n, &mut spans);
    spans
}

fn push_trimmed(chars: &[char], mut start: usize, mut end: usize, spans: &mut Vec<(usize, usize)>) {
    while start < end && chars[start].is_whitespace() {
        start += 1;
    }
    while end > start && chars[end - 1].is_whitespace() {
        end -= 1;
    }
    if start < end {
        spans.push((start, end));
    }
}

/// Maximal runs of non-whitespace characters.
fn non_whitespace_runs(chars: &[char]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
        runs.push((start, i));
    }
    runs
}

/// For each character, the index of the (disjoint) segment containing it, if any.
fn segment_of_char(n_chars: usize, segments: &[(usize, usize)]) -> Vec<Option<usize>> {
    let mut of_char = vec![None; n_chars];
    for (k, &(s, e)) in segments.iter().enumerate() {
        for slot in &mut of_char[s..e] {
            *slot = Some(k);
        }
    }
    of_char
}

/// Non-special tokens sharing a word id `>= 0` form a unit; word id < 0 gives a unit of its own.
fn by_word_ids(special: &[bool], word_ids: &[i64]) -> Vec<i64> {
    let mut unit_of_word: HashMap<i64, i64> = HashMap::new();
    let mut next = 0;
    special
        .iter()
        .zip(word_ids)
        .map(|(&sp, &w)| {
            if sp {
                -1
            } else if w < 0 {
                next += 1;
                next - 1
            } else {
                *unit_of_word.entry(w).or_insert_with(|| {
                    next += 1;
                    next - 1
                })
            }
        })
        .collect()
}

/// Non-special tokens go to the segment containing their first non-whitespace character; a token
/// with none (whitespace only, or an empty offset) joins the previous non-special token's unit,
/// or is a unit of its own if it is the first.
///
/// Only the first non-whitespace character decides: a token that starts on whitespace *inside* a
/// segment (a sentence has inner spaces, a word has none) still follows that rule, so a
/// whitespace-only token never opens a unit of its own after the first token.
fn by_segments(
    special: &[bool],
    offsets: &[(usize, usize)],
    chars: &[char],
    segment_of: &[Option<usize>],
) -> Vec<i64> {
    let mut unit_of_segment: HashMap<usize, i64> = HashMap::new();
    let mut next = 0;
    let mut previous: Option<i64> = None;
    special
        .iter()
        .zip(offsets)
        .map(|(&sp, &(s, e))| {
            if sp {
                return -1;
            }
            let first_visible = chars[s..e].iter().position(|c| !c.is_whitespace());
            // Segments cover every non-whitespace character, so `segment_of` is `Some` there.
            let segment = first_visible.and_then(|k| segment_of[s + k]);
            let unit = match segment {
                Some(seg) => *unit_of_segment.entry(seg).or_insert_with(|| {
                    next += 1;
                    next - 1
                }),
                None => previous.unwrap_or_else(|| {
                    next += 1;
                    next - 1
                }),
            };
            previous = Some(unit);
            unit
        })
        .collect()
}

/// `(min start, max end)` of each unit's non-empty offsets, or `(s, s)` of its first token when
/// all its offsets are empty.
fn unit_spans(token_to_unit: &[i64], offsets: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let n_units = token_to_unit.iter().max().map_or(0, |&u| (u + 1).max(0)) as usize;
    let mut first: Vec<Option<usize>> = vec![None; n_units];
    let mut covered: Vec<Option<(usize, usize)>> = vec![None; n_units];
    for (&unit, &(s, e)) in token_to_unit.iter().zip(offsets) {
        let Ok(u) = usize::try_from(unit) else {
            continue;
        };
        first[u].get_or_insert(s);
        if s < e {
            covered[u] = Some(covered[u].map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
        }
    }
    first
        .into_iter()
        .zip(covered)
        .map(|(f, c)| c.unwrap_or_else(|| (f.unwrap_or(0), f.unwrap_or(0))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spans_text(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        sentence_spans(text)
            .into_iter()
            .map(|(s, e)| chars[s..e].iter().collect())
            .collect()
    }

    #[test]
    fn granularity_names() {
        assert_eq!("word".parse::<Granularity>(), Ok(Granularity::Word));
        assert!(matches!(
            "paragraph".parse::<Granularity>(),
            Err(CoreError::UnknownStrategy { .. })
        ));
    }

    #[test]
    fn sentences_basic() {
        assert_eq!(
            spans_text("Hello world. How are you? Fine!"),
            ["Hello world.", "How are you?", "Fine!"]
        );
        assert_eq!(
            sentence_spans("Hello world. How are you? Fine!"),
            vec![(0, 12), (13, 25), (26, 31)]
        );
    }

    #[test]
    fn sentences_edge_cases() {
        assert!(sentence_spans("").is_empty());
        assert!(sentence_spans("   \n\t ").is_empty());
        assert_eq!(
            spans_text("  no terminal punctuation  "),
            ["no terminal punctuation"]
        );
        assert_eq!(sentence_spans("  ab. cd  "), vec![(2, 5), (6, 8)]);
        assert_eq!(
            spans_text("Wait... what?! Really."),
            ["Wait...", "what?!", "Really."]
        );
        assert_eq!(
            spans_text("He said \"stop.\" Then (he left.) Done"),
            ["He said \"stop.\"", "Then (he left.)", "Done"]
        );
        assert_eq!(spans_text("Pi is 3.14. Yes."), ["Pi is 3.14.", "Yes."]);
        assert_eq!(spans_text("end.\nNext"), ["end.", "Next"]);
        assert_eq!(spans_text("No space.After"), ["No space.After"]);
    }

    #[test]
    fn sentences_keep_abbreviations_and_initials() {
        assert_eq!(
            spans_text(
                "Mr. Smith met Dr. Jones, e.g. at St. Paul etc. today. \
                 J. R. R. Tolkien wrote. Fig. 3 shows it."
            ),
            [
                "Mr. Smith met Dr. Jones, e.g. at St. Paul etc. today.",
                "J. R. R. Tolkien wrote.",
                "Fig. 3 shows it."
            ]
        );
        assert_eq!(
            spans_text("See (i.e. this) MR. X vs. Yo. Ok"),
            ["See (i.e. this) MR. X vs. Yo.", "Ok"]
        );
        // A lower-case single letter is not an initial; a run of dots is not an abbreviation.
        assert_eq!(
            spans_text("plan b. Then Dr.. Next"),
            ["plan b.", "Then Dr..", "Next"]
        );
    }

    #[test]
    fn sentences_count_code_points() {
        // Each emoji and CJK character is one code point (several bytes).
        let text = "日本語です。 🙂🙂 ok! 終わり.";
        assert_eq!(sentence_spans(text), vec![(0, 13), (14, 18)]);
        assert_eq!(spans_text(text), ["日本語です。 🙂🙂 ok!", "終わり."]);
    }

    #[test]
    fn all_tokens_and_token() {
        let special = [true, false, false, true];
        let offsets = [(0, 0), (0, 2), (3, 5), (0, 0)];
        let g = group(Granularity::AllTokens, &special, &offsets, None, "ab cd").unwrap();
        assert_eq!(g.token_to_unit, vec![0, 1, 2, 3]);
        assert_eq!(g.spans, offsets.to_vec());
        let g = group(Granularity::Token, &special, &offsets, None, "ab cd").unwrap();
        assert_eq!(g.token_to_unit, vec![-1, 0, 1, -1]);
        assert_eq!(g.spans, vec![(0, 2), (3, 5)]);
    }

    #[test]
    fn words_from_word_ids() {
        // [CLS] un ##believ ##able ! [SEP]
        let text = "unbelievable !";
        let special = [true, false, false, false, false, true];
        let offsets = [(0, 0), (0, 2), (2, 8), (8, 12), (13, 14), (0, 0)];
        let ids = [-1, 0, 0, 0, 1, -1];
        let g = group(Granularity::Word, &special, &offsets, Some(&ids), text).unwrap();
        assert_eq!(g.token_to_unit, vec![-1, 0, 0, 0, 1, -1]);
        assert_eq!(g.spans, vec![(0, 12), (13, 14)]);
        // A non-special token without a word id is a unit of its own.
        let ids = [-1, 0, -1, 0, 1, -1];
        let g = group(Granularity::Word, &special, &offsets, Some(&ids), text).unwrap();
        assert_eq!(g.token_to_unit, vec![-1, 0, 1, 0, 2, -1]);
        assert_eq!(g.spans, vec![(0, 12), (2, 8), (13, 14)]);
    }

    #[test]
    fn words_from_offsets() {
        // SentencePiece-like tokens whose offsets include the leading space.
        let text = "héllo wörld 🙂x";
        let special = [true, false, false, false, false, false, true];
        let offsets = [
            (0, 0),
            (0, 3),
            (3, 5),
            (5, 11),
            (11, 13),
            (13, 14),
            (14, 14),
        ];
        let g = group(Granularity::Word, &special, &offsets, None, text).unwrap();
        assert_eq!(g.token_to_unit, vec![-1, 0, 0, 1, 2, 2, -1]);
        assert_eq!(g.spans, vec![(0, 5), (5, 11), (11, 14)]);
    }

    #[test]
    fn whitespace_and_empty_tokens_join_the_previous_unit() {
        let text = " a  b";
        let special = [false, false, false, false, false];
        // " " (first: own unit), "a", "  " (joins a), "" (joins a), "b"
        let offsets = [(0, 1), (1, 2), (2, 4), (4, 4), (4, 5)];
        let g = group(Granularity::Word, &special, &offsets, None, text).unwrap();
        assert_eq!(g.token_to_unit, vec![0, 1, 1, 1, 2]);
        assert_eq!(g.spans, vec![(0, 1), (1, 4), (4, 5)]);
        // A unit whose tokens all have empty offsets gets the empty span of its first token.
        let g = group(
            Granularity::Word,
            &[false, false],
            &[(3, 3), (3, 3)],
            None,
            "ab cd",
        )
        .unwrap();
        assert_eq!(g.token_to_unit, vec![0, 0]);
        assert_eq!(g.spans, vec![(3, 3)]);
    }

    #[test]
    fn sentence_whitespace_token_joins_the_previous_unit() {
        // "Hi." then a token covering only the space inside "Yo there": it joins "Hi."'s unit,
        // as for words, even though the space lies inside the second sentence.
        let text = "Hi. Yo there";
        let special = [false, false];
        let offsets = [(0, 3), (6, 7)];
        for gran in [Granularity::Word, Granularity::Sentence] {
            let g = group(gran, &special, &offsets, None, text).unwrap();
            assert_eq!(g.token_to_unit, vec![0, 0], "{gran:?}");
            assert_eq!(g.spans, vec![(0, 7)], "{gran:?}");
        }
        // A token starting on an inner space goes to the sentence of its first visible character.
        let offsets = [(0, 3), (3, 5), (6, 9)];
        let g = group(Granularity::Sentence, &[false; 3], &offsets, None, text).unwrap();
        assert_eq!(g.token_to_unit, vec![0, 1, 1]);
        assert_eq!(g.spans, vec![(0, 3), (3, 9)]);
        // First token whitespace-only: a unit of its own; later ones still join it.
        let offsets = [(6, 7), (9, 9), (7, 12)];
        let g = group(Granularity::Sentence, &[false; 3], &offsets, None, text).unwrap();
        assert_eq!(g.token_to_unit, vec![0, 0, 1]);
        assert_eq!(g.spans, vec![(6, 7), (7, 12)]);
    }

    #[test]
    fn sentences_group_tokens_and_drop_empty_sentences() {
        let text = "One. Two. Three.";
        // Tokens cover only "One." and "Three." (the middle sentence has no tokens).
        let special = [true, false, false, false, false, true];
        let offsets = [(0, 0), (0, 3), (3, 4), (10, 15), (15, 16), (0, 0)];
        let g = group(Granularity::Sentence, &special, &offsets, None, text).unwrap();
        assert_eq!(g.token_to_unit, vec![-1, 0, 0, 1, 1, -1]);
        assert_eq!(g.spans, vec![(0, 4), (10, 16)]);
    }

    #[test]
    fn errors() {
        let e = group(Granularity::Token, &[false], &[(0, 1), (1, 2)], None, "ab");
        assert!(matches!(e, Err(CoreError::Shape(_))), "{e:?}");
        let e = group(Granularity::Word, &[false], &[(0, 1)], Some(&[0, 1]), "ab");
        assert!(matches!(e, Err(CoreError::Shape(_))), "{e:?}");
        let e = group(Granularity::Token, &[false], &[(0, 3)], None, "ab");
        assert!(
            matches!(e, Err(CoreError::IdOutOfRange(ref m)) if m.contains("(0, 3)")),
            "{e:?}"
        );
        let e = group(Granularity::Token, &[false], &[(2, 1)], None, "ab");
        assert!(matches!(e, Err(CoreError::IdOutOfRange(_))), "{e:?}");
        // Offsets count code points: "é" is one character (two bytes).
        assert!(group(Granularity::Token, &[false], &[(0, 2)], None, "éa").is_ok());
        assert!(group(Granularity::Token, &[false], &[(0, 3)], None, "éa").is_err());
        let g = group(Granularity::Sentence, &[], &[], None, "").unwrap();
        assert!(g.token_to_unit.is_empty() && g.spans.is_empty());
    }

    /// Text, special mask, offsets and word ids of one tokenised input.
    type Tokenised = (String, Vec<bool>, Vec<(usize, usize)>, Vec<i64>);

    /// A random text and a plausible tokenisation of it: specials at both ends, every word split
    /// into pieces, sometimes a piece that carries the preceding whitespace, sometimes a token
    /// covering only whitespace or with an empty offset.
    fn tokenised() -> impl Strategy<Value = Tokenised> {
        let word = prop::collection::vec(
            prop::sample::select(vec![
                'a', 'B', 'é', '日', '本', '🙂', '.', '!', '?', '"', ')', '3',
            ]),
            1..6,
        );
        let sep = prop::sample::select(vec![" ", "  ", "\n", " \t"]);
        (
            prop::collection::vec((word, sep, any::<u8>()), 0..12),
            any::<bool>(),
        )
            .prop_map(|(words, leading)| {
                let mut text: Vec<char> = Vec::new();
                let mut special = vec![true];
                let mut offsets = vec![(0, 0)];
                let mut ids = vec![-1];
                if leading {
                    text.push(' ');
                }
                for (w, (chars, sep, choice)) in words.into_iter().enumerate() {
                    let start = text.len();
                    text.extend(&chars);
                    let mut pos = start;
                    // Pieces of 1..=2 characters; the first piece may include the space before.
                    while pos < text.len() {
                        let len = 1 + usize::from(choice & 1 == 1 && pos + 1 < text.len());
                        let s = if pos == start && choice & 2 == 2 && start > 0 {
                            start - 1
                        } else {
                            pos
                        };
                        special.push(false);
                        offsets.push((s, pos + len));
                        ids.push(w as i64);
                        pos += len;
                    }
                    if choice & 4 == 4 {
                        special.push(false);
                        offsets.push((pos, pos));
                        ids.push(-1);
                    }
                    text.extend(sep.chars());
                    if choice & 8 == 8 {
                        special.push(false);
                        offsets.push((pos, pos + 1));
                        ids.push(-1);
                    }
                }
                special.push(true);
                offsets.push((0, 0));
                ids.push(-1);
                (text.into_iter().collect(), special, offsets, ids)
            })
    }

    fn check_partition(g: &Grouping, special: &[bool], offsets: &[(usize, usize)], all: bool) {
        let n_units = g.spans.len();
        let mut next = 0;
        for (i, &u) in g.token_to_unit.iter().enumerate() {
            if special[i] && !all {
                assert_eq!(u, -1, "special token {i} must have no unit");
                continue;
            }
            // Every (non-special) token has exactly one unit, numbered by first appearance.
            assert!(
                u >= 0 && (u as usize) < n_units,
                "token {i} has unit {u} of {n_units}"
            );
            assert!(u <= next, "unit {u} appears before unit {next}");
            if u == next {
                next += 1;
            }
            let (s, e) = offsets[i];
            let (a, b) = g.spans[u as usize];
            if s < e {
                assert!(
                    a <= s && e <= b,
                    "token {i} {:?} outside its span {:?}",
                    (s, e),
                    (a, b)
                );
            }
        }
        assert_eq!(next as usize, n_units, "every unit has a token");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn groupings_are_partitions((text, special, offsets, ids) in tokenised()) {
            let all = [
                Granularity::AllTokens,
                Granularity::Token,
                Granularity::Word,
                Granularity::Sentence,
            ];
            for gran in all {
                let g = group(gran, &special, &offsets, None, &text).unwrap();
                check_partition(&g, &special, &offsets, gran == Granularity::AllTokens);
                if gran == Granularity::Word {
                    let w = group(gran, &special, &offsets, Some(&ids), &text).unwrap();
                    check_partition(&w, &special, &offsets, false);
                }
            }
            let tokens = group(Granularity::Token, &special, &offsets, None, &text).unwrap();
            let words = group(Granularity::Word, &special, &offsets, None, &text).unwrap();
            let sentences = group(Granularity::Sentence, &special, &offsets, None, &text).unwrap();
            // Coarser granularities never split a finer unit.
            prop_assert!(words.spans.len() <= tokens.spans.len());
            prop_assert!(sentences.spans.len() <= words.spans.len());
        }

        #[test]
        fn sentence_spans_are_trimmed_ordered_and_cover_all_text(
            text in "[a-zA-Z .!?\"')\\]\n日🙂]{0,60}"
        ) {
            let chars: Vec<char> = text.chars().collect();
            let spans = sentence_spans(&text);
            let mut covered = vec![false; chars.len()];
            let mut last_end = 0;
            for &(s, e) in &spans {
                prop_assert!(s < e && s >= last_end && e <= chars.len());
                prop_assert!(!chars[s].is_whitespace() && !chars[e - 1].is_whitespace());
                covered[s..e].iter_mut().for_each(|c| *c = true);
                last_end = e;
            }
            for (c, cov) in chars.iter().zip(&covered) {
                prop_assert!(c.is_whitespace() || *cov, "{:?} not in a sentence", c);
            }
        }
    }
}
