//! grub.cfg, pass 1: tokens into statements. A statement is a command (its words unexpanded),
//! a `menuentry`/`submenu` block with its body, or a construct vboot does not run (`if`, `for`,
//! `while`, `until`, `function`), kept only as where it stands and how many menu blocks it hides.
//! Syntax errors are found here; nothing is evaluated.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::ConfigError;
use crate::config::lexer::{tokenize, Piece, Token, TokenKind, Word};

/// Deeper nesting than any real file has; the bound keeps a hostile file from exhausting the
/// firmware's stack.
const MAX_DEPTH: usize = 32;

/// The statements of a whole file (`src` with LF line ends).
pub(super) fn statements(src: &str) -> Result<Vec<Stmt>, ConfigError> {
    let tokens = tokenize(src)?;
    let mut parser = Parser { tokens: &tokens, pos: 0, src };
    let (stmts, _) = parser.list(End::Eof, 0)?;
    Ok(stmts)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockKind {
    Menuentry,
    Submenu,
}

#[derive(Debug)]
pub(super) enum Stmt {
    Command {
        words: Vec<Word>,
        line: usize,
    },
    Block {
        kind: BlockKind,
        args: Vec<Word>,
        line: usize,
        body: Vec<Stmt>,
        raw: String,
    },
    /// `if ... fi` and friends; `entries` counts the menu blocks inside, for the notice.
    Skipped {
        keyword: String,
        line: usize,
        end_line: usize,
        entries: usize,
    },
}

#[derive(Clone, Copy)]
enum End<'k> {
    Eof,
    /// The `}` of a block opened at `line` by `what`.
    Brace {
        what: &'k str,
        line: usize,
    },
    /// A command starting with `keyword` closes the construct `opener` began at `line`.
    Keyword {
        keyword: &'k str,
        opener: &'k str,
        line: usize,
    },
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    src: &'t str,
}

fn count_blocks(stmts: &[Stmt]) -> usize {
    stmts
        .iter()
        .map(|s| match s {
            Stmt::Block { body, kind, .. } => {
                1 + if *kind == BlockKind::Submenu { count_blocks(body) } else { 0 }
            }
            Stmt::Skipped { entries, .. } => *entries,
            Stmt::Command { .. } => 0,
        })
        .sum()
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn error(line: usize, column: usize, message: String) -> ConfigError {
        ConfigError { line, column, message }
    }

    /// Statements up to `end`. Returns them and the line where the list ended, plus for a
    /// brace block the byte offset of its `}`.
    fn list(&mut self, end: End, depth: usize) -> Result<(Vec<Stmt>, (usize, usize)), ConfigError> {
        let mut stmts = Vec::new();
        loop {
            let tok = match self.peek() {
                Some(t) => t,
                None => {
                    let last_line = self.tokens.last().map_or(1, |t| t.line);
                    return match end {
                        End::Eof => Ok((stmts, (last_line, self.src.len()))),
                        End::Brace { what, line } => Err(Self::error(
                            line,
                            1,
                            format!("missing `}}`: the {} opened here is never closed", what),
                        )),
                        End::Keyword { keyword, opener, line } => {
                            Err(Self::error(line, 1, format!("`{}` has no matching `{}`", opener, keyword)))
                        }
                    };
                }
            };
            match &tok.kind {
                TokenKind::Newline | TokenKind::Semicolon => self.pos += 1,
                TokenKind::RBrace => {
                    if let End::Brace { .. } = end {
                        self.pos += 1;
                        return Ok((stmts, (tok.line, tok.start)));
                    }
                    return Err(Self::error(tok.line, tok.column, "`}` without an open `{`".into()));
                }
                TokenKind::LBrace => {
                    return Err(Self::error(
                        tok.line,
                        tok.column,
                        "`{` without menuentry, submenu or function before it".into(),
                    ))
                }
                TokenKind::Word(_) => {
                    let mut words = Vec::new();
                    while let Some(Token { kind: TokenKind::Word(w), .. }) = self.peek() {
                        words.push(w.clone());
                        self.pos += 1;
                    }
                    // `then`, `else`, `elif`, `do` introduce the command after them.
                    while words
                        .first()
                        .and_then(|w| w.keyword())
                        .is_some_and(|k| matches!(k, "then" | "else" | "elif" | "do"))
                    {
                        words.remove(0);
                    }
                    let first = match words.first() {
                        Some(w) => w,
                        None => continue,
                    };
                    if let End::Keyword { keyword, .. } = end {
                        if first.keyword() == Some(keyword) {
                            return Ok((stmts, (first.line, tok.start)));
                        }
                    }
                    stmts.push(self.statement(words, depth)?);
                }
            }
        }
    }

    fn statement(&mut self, words: Vec<Word>, depth: usize) -> Result<Stmt, ConfigError> {
        let first = match words.first() {
            Some(w) => w,
            None => return Ok(Stmt::Command { words, line: 0 }),
        };
        let line = first.line;
        if depth >= MAX_DEPTH {
            return Err(Self::error(line, first.column, "blocks nested too deeply".into()));
        }
        let keyword = first.keyword().unwrap_or("");
        let closing = match keyword {
            "if" => Some("fi"),
            "for" | "while" | "until" => Some("done"),
            _ => None,
        };
        if let Some(closing) = closing {
            let (body, (end_line, _)) =
                self.list(End::Keyword { keyword: closing, opener: keyword, line }, depth + 1)?;
            return Ok(Stmt::Skipped {
                keyword: keyword.into(),
                line,
                end_line,
                entries: count_blocks(&body),
            });
        }
        let block = match keyword {
            "menuentry" => Some(BlockKind::Menuentry),
            "submenu" => Some(BlockKind::Submenu),
            "function" => None,
            _ => {
                if let Some(Token { kind: TokenKind::LBrace, line, column, .. }) = self.peek() {
                    return Err(Self::error(
                        *line,
                        *column,
                        format!(
                            "`{{` after `{}`: only menuentry, submenu and function take a block",
                            keyword_or_text(first)
                        ),
                    ));
                }
                return Ok(Stmt::Command { words, line });
            }
        };
        // The body's `{` may be on the same line or on a following one.
        let mut look = self.pos;
        while let Some(Token { kind: TokenKind::Newline, .. }) = self.tokens.get(look) {
            look += 1;
        }
        let open = match self.tokens.get(look) {
            Some(t @ Token { kind: TokenKind::LBrace, .. }) => t,
            _ => {
                return Err(Self::error(line, first.column, format!("`{}` has no `{{ ... }}` body", keyword)))
            }
        };
        self.pos = look + 1;
        let (body, (_, close_start)) = self.list(End::Brace { what: keyword, line }, depth + 1)?;
        let raw = self.src.get(open.end..close_start).unwrap_or("").to_string();
        match block {
            None => Ok(Stmt::Skipped {
                keyword: keyword.into(),
                line,
                end_line: line,
                entries: count_blocks(&body),
            }),
            Some(kind) => {
                Ok(Stmt::Block { kind, args: words.get(1..).unwrap_or(&[]).to_vec(), line, body, raw })
            }
        }
    }
}

fn keyword_or_text(w: &Word) -> String {
    let mut s = String::new();
    for p in &w.pieces {
        match p {
            Piece::Lit { text, .. } => s.push_str(text),
            Piece::Var { name, .. } => {
                s.push_str("${");
                s.push_str(name);
                s.push('}');
            }
        }
    }
    s
}
