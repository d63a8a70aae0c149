//! Text pieces the answer code shares: sentences, content words, citation markers.
//!
//! Chinese, Japanese and Korean put no spaces between words: a run of their characters counts
//! as its overlapping character bigrams (a lone character as itself), traditional Chinese
//! folded to simplified as the keyword index does, so that words meet across scripts.

use kb_index::{is_cjk, to_simplified};

/// Words that carry no content: an answer sentence is judged by the rest.
const STOP: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "by", "with", "and", "or", "but", "is", "are", "was",
    "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "as", "from", "into", "than", "then",
    "so", "such", "not", "no", "do", "does", "did", "has", "have", "had", "which", "who", "whom", "what", "when",
    "where", "why", "how", "there", "their", "they", "them", "he", "she", "his", "her", "we", "our", "you", "your",
    "i", "me", "my", "also", "can", "could", "would", "should", "may", "might", "will", "shall",
];

pub fn is_stop(word: &str) -> bool {
    STOP.contains(&word)
}

/// Lower-cased words (letters, digits, `_`), in order; CJK runs as their character bigrams.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()) {
        if !w.chars().any(is_cjk) {
            out.push(w.to_lowercase());
            continue;
        }
        // Split where the script changes: "QS-3型" is "qs", "3", then the Han run.
        let mut rest = w;
        while let Some(first) = rest.chars().next() {
            let cjk = is_cjk(first);
            let end = rest.char_indices().find(|&(_, c)| is_cjk(c) != cjk).map_or(rest.len(), |(i, _)| i);
            let run = &rest[..end];
            if cjk {
                let chars: Vec<char> = run.chars().map(to_simplified).collect();
                match chars.as_slice() {
                    [one] => out.push(one.to_string()),
                    many => out.extend(many.windows(2).map(|p| p.iter().collect::<String>())),
                }
            } else {
                out.push(run.to_lowercase());
            }
            rest = &rest[end..];
        }
    }
    out
}

/// Whether `c` ends a sentence the CJK way, with no space after it.
fn is_cjk_stop(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '｡')
}

/// The full stop a sentence ending in `text` takes: `。` after CJK text, else `.`.
pub fn full_stop(text: &str) -> &'static str {
    let last = text.trim_end().chars().rev().find(|c| c.is_alphanumeric());
    if last.is_some_and(is_cjk) {
        "。"
    } else {
        "."
    }
}

/// Sentence-final punctuation of any script, for trimming a sentence's end.
pub fn is_final_punctuation(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ':' | ';' | '…') || is_cjk_stop(c) || matches!(c, '：')
}

/// The words of `text` that are not stop words, in order.
pub fn content_words(text: &str) -> Vec<String> {
    words(text).into_iter().filter(|w| !is_stop(w)).collect()
}

/// A crude stem, so "greased" meets "grease" and "bearings" meets "bearing".
pub fn stem(word: &str) -> &str {
    for suffix in ["ings", "ing", "ed", "es", "e", "s"] {
        if let Some(base) = word.strip_suffix(suffix) {
            if base.chars().count() >= 4 {
                return base;
            }
        }
    }
    word
}

/// At most `max` words of `sentence`: whole clauses (split after `,`, `;`, `:` and dashes),
/// the run of them sharing the most content words with `question`. A sentence that long is a
/// list or a run-on, and one part of it is what answers; quoting it whole is not an answer.
pub fn clip(sentence: &str, question: &str, max: usize) -> String {
    if sentence.split_whitespace().count() <= max {
        return sentence.to_owned();
    }
    let mut clauses: Vec<String> = Vec::new();
    let mut current = String::new();
    for w in sentence.split_whitespace() {
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(w);
        if w.ends_with([',', ';', ':']) || w == "—" || w == "–" {
            clauses.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        clauses.push(current);
    }
    let asked: Vec<String> = content_words(question).iter().map(|w| stem(w).to_owned()).collect();
    let score = |c: &str| content_words(c).iter().filter(|w| asked.iter().any(|a| a == stem(w))).count();
    let lengths: Vec<usize> = clauses.iter().map(|c| c.split_whitespace().count()).collect();
    let (mut best, mut best_score) = ((0, 0), None);
    for start in 0..clauses.len() {
        let (mut words, mut hits) = (0, 0);
        for end in start..clauses.len() {
            words += lengths[end];
            if words > max {
                break;
            }
            hits += score(&clauses[end]);
            if best_score.is_none_or(|b| hits > b) {
                (best, best_score) = ((start, end), Some(hits));
            }
        }
    }
    if best_score.is_none() {
        // One clause alone is over the limit: its first words.
        return sentence.split_whitespace().take(max).collect::<Vec<_>>().join(" ");
    }
    clauses[best.0..=best.1].join(" ").trim_end_matches([',', ';', ':', ' ']).to_owned()
}

/// Words people abbreviate with a full stop that does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep", "rev",
    "vs", "no", "nos", "vol", "fig", "approx", "ca", "inc", "ltd", "co", "corp", "mt", "ft", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "e.g", "i.e", "cf", "al",
];

/// Whether the full stop after `before` (the text up to it) ends a sentence.
fn ends_sentence(before: &str, next: Option<char>) -> bool {
    let last = before.rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"').next().unwrap_or("");
    let lower = last.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return false;
    }
    // Initials and dotted abbreviations: "J. Smith", "U.S. Army".
    if last.chars().count() == 1 && last.chars().all(char::is_uppercase) || last.contains('.') {
        return false;
    }
    // A new sentence starts with something other than a lower-case letter.
    next.is_none_or(|n| !n.is_lowercase())
}

/// The sentences of a passage, trimmed. Lines are joined when they wrap prose and kept apart
/// when they are list items, headings, table rows or separated by a blank line.
pub fn sentences(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        let starts_item = t.starts_with(['-', '*', '#', '|', '>'])
            || t.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if t.is_empty() || starts_item || current.trim_end().ends_with(':') {
            if !current.trim().is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            current.clear();
        }
        if !t.is_empty() {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(t.trim_start_matches(['#', '>', '-', '*']).trim());
        }
    }
    if !current.trim().is_empty() {
        blocks.push(current);
    }
    let mut out = Vec::new();
    for block in &blocks {
        let chars: Vec<(usize, char)> = block.char_indices().collect();
        let mut start = 0;
        let mut k = 0;
        while k < chars.len() {
            let (i, c) = chars[k];
            k += 1;
            // CJK text puts no space after its full stops; an ellipsis ends a sentence the
            // CJK way only after CJK text. Closing quotes and further stops stay with it.
            let cjk_end = is_cjk_stop(c) || (c == '…' && k > 1 && is_cjk(chars[k - 2].1));
            if cjk_end {
                while k < chars.len()
                    && (is_cjk_stop(chars[k].1)
                        || matches!(chars[k].1, '…' | '」' | '』' | '）' | '”' | '’' | '"' | ')'))
                {
                    k += 1;
                }
                let end = chars.get(k).map_or(block.len(), |(b, _)| *b);
                push_sentence(&mut out, &block[start..end]);
                start = end;
                continue;
            }
            if !matches!(c, '.' | '!' | '?') {
                continue;
            }
            let k = k - 1;
            // The end must be followed by white space or CJK text (closing quotes between).
            let mut j = k + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | '”' | '’') {
                j += 1;
            }
            j = after_references(&chars, j);
            if j < chars.len() && !chars[j].1.is_whitespace() && !is_cjk(chars[j].1) {
                continue;
            }
            let next = chars[j..].iter().map(|(_, c)| *c).find(|c| !c.is_whitespace());
            if c == '.' && !ends_sentence(&block[start..i], next) {
                continue;
            }
            let end = chars.get(j).map_or(block.len(), |(b, _)| *b);
            push_sentence(&mut out, &block[start..end]);
            start = end;
        }
        push_sentence(&mut out, &block[start..]);
    }
    out
}

/// Past the reference marks that may follow a sentence's full stop and stay with it: "[12]",
/// "[citation needed]", a page reference ":43" or ":162–164, 301".
fn after_references(chars: &[(usize, char)], mut j: usize) -> usize {
    loop {
        let at = |k: usize| chars.get(k).map(|(_, c)| *c);
        if at(j) == Some('[') {
            match (j + 1..chars.len().min(j + 32)).find(|&k| at(k) == Some(']')) {
                Some(close) => j = close + 1,
                None => return j,
            }
        } else if at(j) == Some(':') && at(j + 1).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
            loop {
                while at(j).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1;
                }
                // ",154" or "–164" or ", 301": another page.
                let sep = matches!(at(j), Some(',' | '–' | '-'));
                let gap = usize::from(at(j + 1) == Some(' '));
                if sep && at(j + 1 + gap).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1 + gap;
                } else {
                    break;
                }
            }
        } else {
            return j;
        }
    }
}

fn push_sentence(out: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_owned());
    }
}

/// Passage numbers cited as `[n]` (also `[1, 2]`), in order of first citation.
pub fn cited_numbers(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        for part in after[..close].split(',') {
            if let Ok(n) = part.trim().trim_start_matches('#').parse::<usize>() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        rest = &after[close + 1..];
    }
    out
}

/// `text` without `[n]` / `[1, 2]` markers, spaces squeezed.
pub fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close)
                if !after[..close].trim().is_empty()
                    && after[..close].chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c == '#') =>
            {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    let squeezed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    squeezed.replace(" .", ".").replace(" 。", "。").replace(" ,", ",").replace(" ?", "?").replace(" !", "!")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_keep_abbreviations_and_split_lists() {
        let s = sentences("Dr. Smith joined the U.S. Army in 1942. He left in 1946! Did he return? No.");
        assert_eq!(s, vec!["Dr. Smith joined the U.S. Army in 1942.", "He left in 1946!", "Did he return?", "No."]);
        let md = "### Network ports\n\nThe Orion web console listens on port 8443 by default. Workers talk to\nport 7077.\n\n- Each node needs 200 GiB.\n- Debian 12 only.";
        assert_eq!(
            sentences(md),
            vec![
                "Network ports",
                "The Orion web console listens on port 8443 by default.",
                "Workers talk to port 7077.",
                "Each node needs 200 GiB.",
                "Debian 12 only."
            ]
        );
        assert_eq!(
            sentences("Version 2.5 is out. It costs $3.50 now."),
            vec!["Version 2.5 is out.", "It costs $3.50 now."]
        );
        // Reference marks after the stop stay with their sentence.
        assert_eq!(
            sentences("He won.[12] Then he left.[citation needed] He wrote.:162–164, 301 The end."),
            vec!["He won.[12]", "Then he left.[citation needed]", "He wrote.:162–164, 301", "The end."]
        );
    }

    #[test]
    fn cjk_sentences_and_words() {
        assert_eq!(
            sentences("第一句。第二句！真的？是的；不过……还有。Yes.中文"),
            ["第一句。", "第二句！", "真的？", "是的；", "不过……", "还有。", "Yes.", "中文"]
        );
        assert_eq!(sentences("他说：「好。」然后走了。"), ["他说：「好。」", "然后走了。"]);
        // Bigrams, traditional folded to simplified, other scripts split off.
        assert_eq!(words("高山烏龍茶"), ["高山", "山乌", "乌龙", "龙茶"]);
        assert_eq!(words("蓝石牌QS-3润滑脂"), ["蓝石", "石牌", "qs", "3", "润滑", "滑脂"]);
        assert_eq!(words("水 Pump"), ["水", "pump"]);
        assert_eq!((full_stop("每周三开放"), full_stop("Open on Wednesdays")), ("。", "."));
    }

    #[test]
    fn markers_are_read_and_removed() {
        assert_eq!(cited_numbers("a [2] b [1, 2] c [x]"), vec![2, 1]);
        assert_eq!(strip_markers("It is 42 Nm [1]. See [2, 3] and [note]."), "It is 42 Nm. See and [note].");
    }

    #[test]
    fn long_sentences_are_clipped_to_the_clauses_that_answer() {
        let long = "The festival, which began in 1901, features parades, concerts, fireworks, food stalls, \
                    and a market; the bridge over the river was rebuilt in 1911 by the city engineers, \
                    after which traffic doubled, and trams returned.";
        let clipped = clip(long, "When was the bridge rebuilt?", 16);
        assert!(clipped.contains("bridge over the river was rebuilt in 1911"), "{clipped}");
        assert!(clipped.split_whitespace().count() <= 16);
        assert_eq!(clip("Short enough.", "anything?", 16), "Short enough.");
    }

    #[test]
    fn content_words_drop_stop_words() {
        assert_eq!(content_words("The bolt is at 42 Nm."), vec!["bolt", "42", "nm"]);
        assert_eq!(stem("greased"), stem("grease"));
        assert_eq!(stem("bearings"), stem("bearing"));
    }
}
