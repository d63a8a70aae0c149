//! The English analysis of non-CJK runs: a word-delimiter tokenizer.
//!
//! Scientific and technical text writes one name many ways: "IL-6", "IL6", "Bcl-2", "TNF-α",
//! "TNFα". Splitting at letter/digit changes and punctuation, and also indexing the joined
//! form of parts linked by nothing, '-' or '/', lets each spelling meet the others. On BEIR
//! SciFact this lifts BM25 nDCG@10 from 0.684 to 0.708. It reproduces the tokenizer of the
//! simulation that chose it, quirks included, except that superscript and subscript digits
//! and fractions count as digits here (Python's regex took them for letters).

use tantivy::tokenizer::Token;

use super::{push_token, Folded};

/// Longer tokens (in characters) are dropped: they are hashes, URLs and other noise.
const MAX_CHARS: usize = 40;

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Digit,
}

fn class(c: char) -> Option<Class> {
    if c.is_alphabetic() {
        Some(Class::Letter)
    } else if c.is_numeric() {
        Some(Class::Digit)
    } else {
        None
    }
}

/// Each Greek letter is a part of its own spelled as its name (the folding step writes it so).
pub(super) fn greek_name(c: char) -> Option<&'static str> {
    Some(match c {
        'α' => "alpha",
        'β' => "beta",
        'γ' => "gamma",
        'δ' => "delta",
        'ε' | 'ϵ' => "epsilon",
        'ζ' => "zeta",
        'η' => "eta",
        'θ' => "theta",
        'ι' => "iota",
        'κ' => "kappa",
        'λ' => "lambda",
        'μ' | 'µ' => "mu",
        'ν' => "nu",
        'ξ' => "xi",
        'ο' => "omicron",
        'π' => "pi",
        'ρ' => "rho",
        'σ' | 'ς' => "sigma",
        'τ' => "tau",
        'υ' => "upsilon",
        'φ' | 'ϕ' => "phi",
        'χ' => "chi",
        'ψ' => "psi",
        'ω' => "omega",
        _ => return None,
    })
}

/// Splits folded (lowercased, Greek-named) text into letter runs and digit runs, and adds the
/// concatenation of every run of linked parts. Drops long tokens.
pub(super) fn split(chars: &[Folded], tokens: &mut Vec<Token>) {
    // Parts as [start, end) ranges of `chars`; `run` holds the current linked ones.
    let mut run: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let Some(cls) = class(chars[i].c) else {
            i += 1;
            continue;
        };
        let start = i;
        while i < chars.len() && class(chars[i].c) == Some(cls) {
            i += 1;
        }
        if let Some(&(_, prev_end)) = run.last() {
            let linked = match &chars[prev_end..start] {
                [] => true,
                [f] => f.c == '-' || f.c == '/',
                _ => false,
            };
            if !linked {
                emit_run(chars, &run, tokens);
                run.clear();
            }
        }
        run.push((start, i));
    }
    emit_run(chars, &run, tokens);
}

/// The run's concatenation first, then its parts: offsets never go back.
fn emit_run(chars: &[Folded], run: &[(usize, usize)], tokens: &mut Vec<Token>) {
    if run.len() > 1 {
        emit(chars, run, tokens);
    }
    for part in run {
        emit(chars, std::slice::from_ref(part), tokens);
    }
}

fn emit(chars: &[Folded], parts: &[(usize, usize)], tokens: &mut Vec<Token>) {
    if parts.iter().map(|(s, e)| e - s).sum::<usize>() >= MAX_CHARS {
        return;
    }
    let text: String = parts.iter().flat_map(|&(s, e)| chars[s..e].iter().map(|f| f.c)).collect();
    let (first, last) = (parts[0].0, parts[parts.len() - 1].1 - 1);
    push_token(tokens, text, chars[first].from, chars[last].to);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sorted, terms};
    use super::super::STOP_WORDS;

    #[test]
    fn spellings_of_one_name_meet() {
        for (texts, want) in [
            (&["IL-6", "IL6", "il/6"][..], &["il", "6", "il6"][..]),
            (&["Bcl2", "Bcl-2"], &["bcl", "2", "bcl2"]),
            (&["TNF-α", "TNFα", "TNF--α"], &["tnf", "alpha", "tnfalpha"]),
            (&["N-terminal"], &["n", "termin", "ntermin"]),
            (&["IL-1β"], &["il", "1", "beta", "il1beta"]),
        ] {
            for t in texts {
                assert_eq!(terms(t), sorted(want), "{t}");
            }
        }
    }

    #[test]
    fn stop_words_stemming_and_unlinked_parts() {
        assert_eq!(STOP_WORDS.split_whitespace().count(), 125);
        // Stop words go token by token: "and/or" keeps only its concatenation.
        assert_eq!(terms("and/or"), sorted(&["andor"]));
        assert_eq!(terms("T-cell"), sorted(&["t", "cell", "tcell"]));
        // Only one '-' or '/' links; spaces, other punctuation and "-/" do not.
        assert_eq!(terms("a-/b, c d.e"), sorted(&["b", "c", "d", "e"]));
        assert_eq!(terms("The Running Mice"), sorted(&["run", "mice"]));
        // Capital Greek letters and the micro sign have names too.
        assert_eq!(terms("Ω 5µm"), sorted(&["omega", "5", "mu", "m", "5mum"]));
        assert_eq!(terms(&"x".repeat(40)), Vec::<String>::new());
        assert_eq!(terms(&format!("{}-y", "x".repeat(39))), sorted(&[&"x".repeat(39), "y"]));
    }
}
