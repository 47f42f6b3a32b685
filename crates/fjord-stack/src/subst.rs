//! `${VAR}` / `${VAR:-default}` substitution on the raw text, as faas-cli's `--envsubst` does,
//! plus the map from positions in the substituted text back to the file as written, so that
//! errors point at what the user sees in their editor.

/// One replaced `${...}` reference.
#[derive(Debug, Clone, Copy)]
struct Edit {
    /// Byte offset of the replacement in the output.
    out_start: usize,
    /// Byte length of the replacement in the output.
    out_len: usize,
    /// Byte offset of the `${` in the input.
    in_start: usize,
    /// Byte length of the whole `${...}` in the input.
    in_len: usize,
}

/// The substituted text and how to map its positions back.
#[derive(Debug)]
pub(crate) struct Substituted {
    pub text: String,
    edits: Vec<Edit>,
    /// Byte offsets where each line of the *original* text starts.
    line_starts: Vec<usize>,
    original: String,
}

/// A warning raised while substituting, with its original byte offset.
pub(crate) struct SubstWarning {
    pub offset: usize,
    pub message: String,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Replaces `${NAME}` and `${NAME:-default}` using `env`.
///
/// - `${NAME}` with `NAME` unset becomes the empty string (faas-cli behaviour) and adds a
///   warning; set-but-empty is used as is, silently.
/// - `${NAME:-default}` uses `default` when `NAME` is unset or empty (shell semantics). The
///   default is taken literally up to the first `}`; it is not itself substituted.
/// - Anything else starting with `$` (a bare `$NAME`, `${1}`, `${NAME-x}`, an unterminated
///   `${`) is left as written.
pub(crate) fn substitute(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Substituted, Vec<SubstWarning>) {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut edits = Vec::new();
    let mut warnings = Vec::new();
    let mut copied_to = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'$' || bytes[i + 1] != b'{' {
            i += 1;
            continue;
        }
        let start = i;
        let name_start = i + 2;
        let mut j = name_start;
        if j < bytes.len() && is_name_start(bytes[j]) {
            j += 1;
            while j < bytes.len() && is_name_char(bytes[j]) {
                j += 1;
            }
        }
        if j == name_start {
            i += 2;
            continue;
        }
        let name = &input[name_start..j];
        let (default, end) = if bytes.get(j) == Some(&b'}') {
            (None, j + 1)
        } else if input[j..].starts_with(":-") {
            match input[j + 2..].find(['}', '\n']) {
                Some(k) if bytes[j + 2 + k] == b'}' => {
                    (Some(&input[j + 2..j + 2 + k]), j + 2 + k + 1)
                }
                _ => {
                    i = j;
                    continue;
                }
            }
        } else {
            i = j;
            continue;
        };
        let value = match (env(name), default) {
            (Some(v), None) => v,
            (Some(v), Some(d)) => {
                if v.is_empty() {
                    d.to_string()
                } else {
                    v
                }
            }
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                warnings.push(SubstWarning {
                    offset: start,
                    message: format!(
                        "${{{name}}} is not set, substituted an empty string; set {name} or write ${{{name}:-default}}"
                    ),
                });
                String::new()
            }
        };
        out.push_str(&input[copied_to..start]);
        edits.push(Edit {
            out_start: out.len(),
            out_len: value.len(),
            in_start: start,
            in_len: end - start,
        });
        out.push_str(&value);
        copied_to = end;
        i = end;
    }
    out.push_str(&input[copied_to..]);
    (Substituted::new(input, out, edits), warnings)
}

impl Substituted {
    fn new(original: &str, text: String, edits: Vec<Edit>) -> Substituted {
        let line_starts = std::iter::once(0)
            .chain(
                original
                    .bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(k, _)| k + 1),
            )
            .collect();
        Substituted {
            text,
            edits,
            line_starts,
            original: original.to_string(),
        }
    }

    /// The text unchanged (no substitution), for environment files.
    pub(crate) fn verbatim(input: &str) -> Substituted {
        Substituted::new(input, input.to_string(), Vec::new())
    }

    /// Maps a byte offset in the substituted text to one in the original. An offset inside a
    /// substituted value maps to the `${` that produced it.
    pub(crate) fn original_offset(&self, out: usize) -> usize {
        let idx = self.edits.partition_point(|e| e.out_start <= out);
        if idx == 0 {
            return out;
        }
        let e = self.edits[idx - 1];
        if out < e.out_start + e.out_len {
            e.in_start
        } else {
            e.in_start + e.in_len + (out - e.out_start - e.out_len)
        }
    }

    /// 1-based line and character column of a byte offset in the original text.
    pub(crate) fn line_col_of_original(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.original.len());
        let line_idx = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let line_start = self.line_starts[line_idx];
        let mut col_end = offset;
        while !self.original.is_char_boundary(col_end) {
            col_end -= 1;
        }
        let column = self.original[line_start..col_end].chars().count() + 1;
        (
            u32::try_from(line_idx + 1).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }

    /// 1-based line and column, in the original text, of a byte offset in the substituted one.
    pub(crate) fn line_col(&self, out_offset: usize) -> (u32, u32) {
        self.line_col_of_original(self.original_offset(out_offset))
    }

    /// The substituted text's slice at `[start, start + len)`, if it is a valid range.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Option<&str> {
        self.text.get(start..start.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OWNER" => Some("acme".into()),
            "EMPTY" => Some(String::new()),
            "LONG" => Some("a-much-longer-value".into()),
            _ => None,
        }
    }

    fn run(s: &str) -> (String, Vec<String>) {
        let (out, w) = substitute(s, &env);
        (out.text, w.into_iter().map(|w| w.message).collect())
    }

    #[test]
    fn forms() {
        assert_eq!(run("${OWNER}/x").0, "acme/x");
        assert_eq!(run("${OWNER:-other}").0, "acme");
        assert_eq!(run("${NOPE:-other}").0, "other");
        assert_eq!(run("${EMPTY:-other}").0, "other");
        assert_eq!(run("${EMPTY}x").0, "x");
        assert_eq!(run("${NOPE:-}x").0, "x");
        assert_eq!(run("${NOPE:-a b:c}").0, "a b:c");
        let (text, warnings) = run("a ${NOPE} b");
        assert_eq!(text, "a  b");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("${NOPE} is not set"));
    }

    #[test]
    fn other_dollar_forms_are_left_alone() {
        for s in [
            "$OWNER",
            "$",
            "${",
            "${}",
            "${1}",
            "${OWNER-x}",
            "${OWNER",
            "${A:-x\n}",
            "$$",
            "a$",
            "${-}",
        ] {
            assert_eq!(run(s), (s.to_string(), vec![]), "{s:?}");
        }
    }

    #[test]
    fn positions_map_back_to_the_original() {
        let src = "a: ${LONG}\nb: ${OWNER:-zzzzzzzz} [\n";
        let (s, _) = substitute(src, &env);
        assert_eq!(s.text, "a: a-much-longer-value\nb: acme [\n");
        let bracket = s.text.find('[').unwrap();
        assert_eq!(s.line_col(bracket), (2, 23));
        // Inside a substituted value: the `${`.
        assert_eq!(s.line_col(5), (1, 4));
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(s.text.len()), (3, 1));
    }

    #[test]
    fn columns_count_characters() {
        let (s, _) = substitute("é: ${OWNER} x", &env);
        assert_eq!(s.line_col(s.text.find('x').unwrap()), (1, 13));
    }
}
