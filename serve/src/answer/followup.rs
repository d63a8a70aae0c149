//! Follow-up questions: "what grease is used for it?" means nothing to retrieval on its own.
//! Before retrieval a follow-up is rewritten into a standalone question, by the generator
//! when there is one (its rewrite is used only when it keeps the follow-up's words and adds
//! some of the conversation's), else by rule: the pronoun is replaced with the key noun
//! phrase of the question before.

use serde::Deserialize;

use super::text::{content_words, is_stop, words};

/// One earlier question and the answer it got.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct Turn {
    pub question: String,
    #[serde(default)]
    pub answer: String,
}

const PRONOUNS: &[&str] = &["it", "they", "them", "this", "that", "these", "those", "he", "she", "him", "there"];
const POSSESSIVES: &[&str] = &["its", "their", "his", "her"];
const DETERMINERS: &[&str] = &["the", "a", "an", "its", "their", "this", "that", "each", "every", "his", "her", "our"];

/// Whether `question` leans on the conversation before it.
pub fn is_follow_up(question: &str) -> bool {
    let w = words(question);
    let lower = question.trim().to_lowercase();
    w.iter().any(|w| PRONOUNS.contains(&w.as_str()) || POSSESSIVES.contains(&w.as_str()))
        || lower.starts_with("and ")
        || lower.starts_with("what about")
        || lower.starts_with("how about")
        || content_words(question).len() <= 1
}

/// The key noun phrase of a question: the words after its first determiner, up to the next
/// stop word ("How often is the main bearing greased?" → "the main bearing"); failing that,
/// its capitalised words, failing that its content words.
pub fn key_phrase(question: &str) -> String {
    let tokens: Vec<&str> = question.split_whitespace().collect();
    let clean = |t: &str| t.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_owned();
    for (i, t) in tokens.iter().enumerate() {
        if !DETERMINERS.contains(&clean(t).to_lowercase().as_str()) {
            continue;
        }
        let mut phrase: Vec<String> = Vec::new();
        for t in &tokens[i + 1..] {
            let w = clean(t);
            if w.is_empty() || is_stop(&w.to_lowercase()) {
                break;
            }
            phrase.push(w);
            if t.ends_with([',', '?', '.', ';', ':']) {
                break;
            }
        }
        // A participle closing a question is its verb: "… the main bearing greased?".
        if phrase.len() > 1 && phrase.last().is_some_and(|w| w.ends_with("ed")) {
            phrase.pop();
        }
        if !phrase.is_empty() {
            return format!("the {}", phrase.join(" "));
        }
    }
    let names: Vec<String> =
        tokens.iter().skip(1).map(|t| clean(t)).filter(|w| w.starts_with(char::is_uppercase)).collect();
    if !names.is_empty() {
        return names.join(" ");
    }
    content_words(question).join(" ")
}

/// The rule-based rewrite of `question` given the question before it.
pub fn by_rule(question: &str, previous: &str) -> String {
    let topic = key_phrase(previous);
    if topic.is_empty() {
        return question.to_owned();
    }
    let mut out: Vec<String> = Vec::new();
    let mut replaced = false;
    for token in question.split_whitespace() {
        let core = token.trim_matches(|c: char| !c.is_alphanumeric());
        let lower = core.to_lowercase();
        if !replaced
            && !core.is_empty()
            && (PRONOUNS.contains(&lower.as_str()) || POSSESSIVES.contains(&lower.as_str()))
        {
            let with = if POSSESSIVES.contains(&lower.as_str()) { format!("{topic}'s") } else { topic.clone() };
            out.push(token.replacen(core, &with, 1));
            replaced = true;
        } else {
            out.push(token.to_owned());
        }
    }
    let mut text = out.join(" ");
    for lead in ["and ", "And "] {
        if let Some(rest) = text.strip_prefix(lead) {
            text = rest.to_owned();
        }
    }
    if !replaced {
        text = format!("{} ({topic})", text.trim_end_matches('?').trim_end());
        if question.trim_end().ends_with('?') {
            text.push('?');
        }
    }
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// Whether a rewrite by the generator can be trusted: one question, not long, keeping the
/// follow-up's own content words and adding at least one from the conversation.
pub fn acceptable(rewrite: &str, question: &str, history: &[Turn]) -> bool {
    let r: std::collections::HashSet<String> = content_words(rewrite).into_iter().collect();
    let own = content_words(question);
    let earlier: std::collections::HashSet<String> =
        history.iter().flat_map(|t| content_words(&t.question)).filter(|w| !own.contains(w)).collect();
    rewrite.split_whitespace().count() <= 30
        && !rewrite.contains('\n')
        && own.iter().all(|w| r.contains(w))
        && r.iter().any(|w| earlier.contains(w))
        && r.iter().all(|w| {
            own.contains(w)
                || earlier.contains(w)
                || history.iter().any(|t| t.answer.to_lowercase().contains(w.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_phrases() {
        assert_eq!(key_phrase("How often is the main bearing greased?"), "the main bearing");
        assert!(key_phrase("Which port does the Orion web console listen on?").starts_with("the Orion web console"));
        assert_eq!(key_phrase("Who is Priya Raman?"), "Priya Raman");
    }

    #[test]
    fn follow_ups_name_their_topic() {
        let first = "How often is the main bearing greased?";
        assert!(is_follow_up("what grease is used for it?"));
        assert!(!is_follow_up(first));
        assert_eq!(by_rule("what grease is used for it?", first), "What grease is used for the main bearing?");
        assert_eq!(
            by_rule("and how often is its gearbox oil changed?", "How often is the Zephyr-9 serviced?"),
            "How often is the Zephyr-9's gearbox oil changed?"
        );
    }

    #[test]
    fn generator_rewrites_are_checked() {
        let h = [Turn { question: "How often is the main bearing greased?".into(), answer: String::new() }];
        let q = "what grease is used for it?";
        assert!(acceptable("What grease is used for the main bearing?", q, &h));
        assert!(!acceptable("What grease is used?", q, &h));
        assert!(!acceptable("What grease is used for the main bearing of the Titanic?", q, &h));
    }
}
