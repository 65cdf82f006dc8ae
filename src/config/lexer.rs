//! Tokens of GRUB's script language, as far as grub.cfg files use it.
//!
//! Words keep their quoting structure (literal text vs. `$var` references, quoted or not)
//! because variables are expanded later, when the command runs with the variables set so far.
//! `{` and `}` are tokens wherever they appear unquoted, as in GRUB's own lexer.

use alloc::string::String;
use alloc::vec::Vec;

use super::ConfigError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text after quote removal. `quoted` text may be empty (`''` is an empty word).
    Lit { text: String, quoted: bool },
    /// `$name` / `${name}`; unquoted expansions are split into words on blanks.
    Var { name: String, quoted: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub pieces: Vec<Piece>,
    pub line: usize,
    pub column: usize,
}

impl Word {
    /// The word's text when it is a plain unquoted literal: only then can it be a keyword
    /// (`if`, `fi`, `menuentry`, ...), as in a POSIX shell.
    pub fn keyword(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Lit { text, quoted: false }] => Some(text),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Word(Word),
    /// `;`
    Semicolon,
    Newline,
    LBrace,
    RBrace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub line: usize,
    pub column: usize,
    /// Byte range in the (CRLF-normalised) source, for the raw text of entry bodies.
    pub start: usize,
    pub end: usize,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    column: usize,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(&self, line: usize, column: usize, message: &str) -> ConfigError {
        ConfigError { line, column, message: message.into() }
    }

    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(' ') | Some('\t') | Some('\r') | Some('\x0c') | Some('\x0b') => {
                    self.bump();
                }
                Some('\\') if self.peek_second() == Some('\n') => {
                    self.bump();
                    self.bump();
                }
                _ => return,
            }
        }
    }

    /// After `$`: a variable reference, or `None` when `$` is just a character.
    fn variable(&mut self, quoted: bool) -> Result<Option<Piece>, ConfigError> {
        let (line, column) = (self.line, self.column - 1);
        match self.peek() {
            Some('{') => {
                self.bump();
                let mut name = String::new();
                loop {
                    match self.bump() {
                        Some('}') => break,
                        Some('\n') | None => {
                            return Err(self.error(line, column, "unterminated ${...} variable reference"))
                        }
                        Some(c) => name.push(c),
                    }
                }
                Ok(Some(Piece::Var { name, quoted }))
            }
            Some(c) if is_name_start(c) => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
                    name.push(c);
                    self.bump();
                }
                Ok(Some(Piece::Var { name, quoted }))
            }
            Some(c) if c.is_ascii_digit() => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| c.is_ascii_digit()) {
                    name.push(c);
                    self.bump();
                }
                Ok(Some(Piece::Var { name, quoted }))
            }
            Some(c @ ('?' | '#' | '*' | '@')) => {
                self.bump();
                Ok(Some(Piece::Var { name: c.into(), quoted }))
            }
            _ => Ok(None),
        }
    }

    fn word(&mut self) -> Result<Word, ConfigError> {
        let (line, column) = (self.line, self.column);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut lit = String::new();
        // Literal text accumulates in `lit` with its quotedness; a change of quotedness or a
        // variable flushes it, so each piece knows whether it was quoted.
        fn flush(pieces: &mut Vec<Piece>, lit: &mut String, quoted: bool) {
            if !lit.is_empty() {
                pieces.push(Piece::Lit { text: core::mem::take(lit), quoted });
            }
        }
        loop {
            let c = match self.peek() {
                None => break,
                Some(c) => c,
            };
            match c {
                ' ' | '\t' | '\r' | '\n' | ';' | '{' | '}' | '\x0c' | '\x0b' => break,
                '\'' => {
                    flush(&mut pieces, &mut lit, false);
                    let (ql, qc) = (self.line, self.column);
                    self.bump();
                    let mut text = String::new();
                    loop {
                        match self.bump() {
                            Some('\'') => break,
                            Some(c) => text.push(c),
                            None => return Err(self.error(ql, qc, "unterminated single quote")),
                        }
                    }
                    pieces.push(Piece::Lit { text, quoted: true });
                }
                '"' => {
                    flush(&mut pieces, &mut lit, false);
                    self.double_quoted(&mut pieces)?;
                }
                '\\' => {
                    self.bump();
                    match self.bump() {
                        Some('\n') => {}
                        Some(c) => lit.push(c),
                        None => lit.push('\\'),
                    }
                }
                '$' => {
                    self.bump();
                    if self.peek() == Some('"') {
                        // $"..." is GRUB's translatable string; without translations it is
                        // the string itself.
                        flush(&mut pieces, &mut lit, false);
                        self.double_quoted(&mut pieces)?;
                    } else {
                        flush(&mut pieces, &mut lit, false);
                        match self.variable(false)? {
                            Some(v) => pieces.push(v),
                            None => lit.push('$'),
                        }
                    }
                }
                _ => {
                    self.bump();
                    lit.push(c);
                }
            }
        }
        flush(&mut pieces, &mut lit, false);
        Ok(Word { pieces, line, column })
    }

    fn double_quoted(&mut self, pieces: &mut Vec<Piece>) -> Result<(), ConfigError> {
        let (ql, qc) = (self.line, self.column);
        self.bump();
        let mut text = String::new();
        // An empty "" still makes a (possibly empty) word.
        let mut produced = false;
        loop {
            match self.bump() {
                None => return Err(self.error(ql, qc, "unterminated double quote")),
                Some('"') => break,
                Some('\\') => match self.peek() {
                    Some(c @ ('"' | '\\' | '$')) => {
                        self.bump();
                        text.push(c);
                    }
                    Some('\n') => {
                        self.bump();
                    }
                    _ => text.push('\\'),
                },
                Some('$') => match self.variable(true)? {
                    Some(v) => {
                        if !text.is_empty() {
                            pieces.push(Piece::Lit { text: core::mem::take(&mut text), quoted: true });
                        }
                        pieces.push(v);
                        produced = true;
                    }
                    None => text.push('$'),
                },
                Some(c) => text.push(c),
            }
        }
        if !text.is_empty() || !produced {
            pieces.push(Piece::Lit { text, quoted: true });
        }
        Ok(())
    }
}

/// Split normalised source (LF line ends) into tokens. Comments and blanks are dropped.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ConfigError> {
    let mut lx = Lexer { src, pos: 0, line: 1, column: 1 };
    let mut tokens = Vec::new();
    loop {
        lx.skip_blanks();
        let (line, column, start) = (lx.line, lx.column, lx.pos);
        let kind = match lx.peek() {
            None => break,
            Some('#') => {
                while lx.peek().is_some_and(|c| c != '\n') {
                    lx.bump();
                }
                continue;
            }
            Some('\n') => {
                lx.bump();
                TokenKind::Newline
            }
            Some(';') => {
                lx.bump();
                TokenKind::Semicolon
            }
            Some('{') => {
                lx.bump();
                TokenKind::LBrace
            }
            Some('}') => {
                lx.bump();
                TokenKind::RBrace
            }
            Some(_) => TokenKind::Word(lx.word()?),
        };
        tokens.push(Token { kind, line, column, start, end: lx.pos });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn lit(s: &str, quoted: bool) -> Piece {
        Piece::Lit { text: s.to_string(), quoted }
    }

    fn var(s: &str, quoted: bool) -> Piece {
        Piece::Var { name: s.to_string(), quoted }
    }

    /// Words of the source, each as its pieces, with separators shown as `;`, `NL`, `{`, `}`.
    fn shape(src: &str) -> Vec<Result<Vec<Piece>, &'static str>> {
        tokenize(src)
            .unwrap()
            .into_iter()
            .map(|t| match t.kind {
                TokenKind::Word(w) => Ok(w.pieces),
                TokenKind::Semicolon => Err(";"),
                TokenKind::Newline => Err("NL"),
                TokenKind::LBrace => Err("{"),
                TokenKind::RBrace => Err("}"),
            })
            .collect()
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shape(r#"a'b c'"d\"e\\f\$g\h" \x"#),
            vec![
                Ok(vec![lit("a", false), lit("b c", true), lit("d\"e\\f$g\\h", true)]),
                Ok(vec![lit("x", false)]),
            ]
        );
        assert_eq!(shape("''"), vec![Ok(vec![lit("", true)])]);
        assert_eq!(shape("'a\\'"), vec![Ok(vec![lit("a\\", true)])]);
    }

    #[test]
    fn variables() {
        assert_eq!(
            shape(r#"$a${b}x"$c-${d}" '$e' \$f $ $1"#),
            vec![
                Ok(vec![
                    var("a", false),
                    var("b", false),
                    lit("x", false),
                    var("c", true),
                    lit("-", true),
                    var("d", true)
                ]),
                Ok(vec![lit("$e", true)]),
                Ok(vec![lit("$f", false)]),
                Ok(vec![lit("$", false)]),
                Ok(vec![var("1", false)]),
            ]
        );
    }

    #[test]
    fn separators_comments_and_continuations() {
        assert_eq!(
            shape("a;b # c d\nx#y {}\\\n  z"),
            vec![
                Ok(vec![lit("a", false)]),
                Err(";"),
                Ok(vec![lit("b", false)]),
                Err("NL"),
                Ok(vec![lit("x#y", false)]),
                Err("{"),
                Err("}"),
                Ok(vec![lit("z", false)]),
            ]
        );
        assert_eq!(shape("ab\\\ncd"), vec![Ok(vec![lit("abcd", false)])]);
        assert_eq!(shape("\"ab\\\ncd\""), vec![Ok(vec![lit("abcd", true)])]);
        assert_eq!(shape("'ab\ncd'"), vec![Ok(vec![lit("ab\ncd", true)])]);
    }

    #[test]
    fn positions() {
        let t = tokenize("set a=1\n  menuentry 'é' {").unwrap();
        assert_eq!((t[3].line, t[3].column), (2, 3));
        assert_eq!((t[4].line, t[4].column), (2, 13));
        assert_eq!((t[5].line, t[5].column), (2, 17));
    }

    #[test]
    fn unterminated() {
        let e = tokenize("a\n  b 'xyz\n").unwrap_err();
        assert_eq!((e.line, e.column, e.message.as_str()), (2, 5, "unterminated single quote"));
        let e = tokenize("\"abc").unwrap_err();
        assert_eq!((e.line, e.column, e.message.as_str()), (1, 1, "unterminated double quote"));
        let e = tokenize("x ${abc").unwrap_err();
        assert_eq!((e.line, e.column), (1, 3));
    }
}
