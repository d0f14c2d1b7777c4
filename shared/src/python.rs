//! Parsing a repository's Python safely: whatever a module holds, the result is a syntax tree of bounded depth or an
//! error with the message CPython gives for the same source, never a crash.
//!
//! The parser grows its own stack while it recurses, so it accepts nesting of any depth; what it builds can then be
//! deeper than any recursive walk (or the tree's own drop) can follow on a thread's stack. CPython refuses such
//! modules with fixed limits, and so does this: more than 200 nested brackets ("too many nested parentheses"), more
//! 99 levels of indentation ("too many levels of indentation"), and expressions nested deeper than
//! [`MAX_EXPRESSION_DEPTH`] ("maximum recursion depth exceeded during compilation", CPython's limit lies between
//! 2,000 and 3,000 for a chain like `1+1+...+1`). A refused tree is taken apart piece by piece before it is freed.

use std::cell::RefCell;

use ruff_python_ast::token::TokenKind;
use ruff_python_ast::visitor::transformer::{self, Transformer};
use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, ExprNoneLiteral, ModModule};
use ruff_text_size::Ranged;

/// CPython's tokenizer limit on open brackets (`MAXLEVEL`).
pub const MAX_BRACKET_DEPTH: usize = 200;
/// CPython's tokenizer limit on indentation levels (`MAXINDENT`): the 100th level is refused.
pub const MAX_INDENT_DEPTH: usize = 100;
/// Deepest expression accepted (CPython gives up between 2,000 and 3,000 for a binary-operator chain).
pub const MAX_EXPRESSION_DEPTH: usize = 2000;

/// A module that could not be parsed: the message and the 1-based line it refers to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonError {
    pub message: String,
    pub line: Option<usize>,
}

/// Parses a module with CPython's nesting limits.
pub fn parse_module(source: &str) -> Result<ModModule, PythonError> {
    parse_module_counted(source).map(|(module, _)| module)
}

/// Parses a module with CPython's nesting limits; also returns how many tokens it has (a measure of the memory its
/// syntax tree takes).
pub fn parse_module_counted(source: &str) -> Result<(ModModule, usize), PythonError> {
    let line_of = |offset: usize| source[..offset.min(source.len())].matches('\n').count() + 1;
    let parsed = match ruff_python_parser::parse_module(source) {
        Ok(parsed) => parsed,
        Err(e) => {
            let line = Some(line_of(e.location.start().to_usize()));
            return Err(PythonError { message: e.error.to_string(), line });
        }
    };
    let (mut brackets, mut indents) = (0usize, 0usize);
    let mut refused = None;
    for token in parsed.tokens().iter() {
        match token.kind() {
            TokenKind::Lpar | TokenKind::Lsqb | TokenKind::Lbrace => {
                brackets += 1;
                if brackets > MAX_BRACKET_DEPTH {
                    refused = Some(("too many nested parentheses", token.start().to_usize()));
                    break;
                }
            }
            TokenKind::Rpar | TokenKind::Rsqb | TokenKind::Rbrace => brackets = brackets.saturating_sub(1),
            TokenKind::Indent => {
                indents += 1;
                if indents >= MAX_INDENT_DEPTH {
                    refused = Some(("too many levels of indentation", token.start().to_usize()));
                    break;
                }
            }
            TokenKind::Dedent => indents = indents.saturating_sub(1),
            _ => {}
        }
    }
    let tokens = parsed.tokens().len();
    let mut module = parsed.into_syntax();
    let too_deep = refused.is_none() && {
        let mut depth = Depth { depth: 0, too_deep: false };
        depth.visit_body(&module.body);
        depth.too_deep
    };
    if refused.is_none() && !too_deep {
        return Ok((module, tokens));
    }
    dismantle(&mut module);
    drop(module);
    Err(match refused {
        Some((message, offset)) => PythonError { message: message.to_owned(), line: Some(line_of(offset)) },
        None => PythonError { message: "maximum recursion depth exceeded during compilation".to_owned(), line: None },
    })
}

/// Finds whether any expression nests deeper than the limit, without descending further than it.
struct Depth {
    depth: usize,
    too_deep: bool,
}

impl<'a> Visitor<'a> for Depth {
    fn visit_expr(&mut self, expr: &'a Expr) {
        if self.too_deep {
            return;
        }
        if self.depth >= MAX_EXPRESSION_DEPTH {
            self.too_deep = true;
            return;
        }
        self.depth += 1;
        // The walk is as deep as the limit: on a small thread stack (debug builds), grow it as the parser does.
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || visitor::walk_expr(self, expr));
        self.depth -= 1;
    }
}

/// How deep the dismantling walk goes before it cuts a subtree off to take apart on its own.
const CUT_DEPTH: usize = 64;

/// Cuts every expression off below [`CUT_DEPTH`] and takes the pieces apart one by one, so that freeing the tree
/// never recurses deeper than that, whatever its depth.
fn dismantle(module: &mut ModModule) {
    let cutter = Cutter { depth: RefCell::new(0), pieces: RefCell::new(Vec::new()) };
    for stmt in &mut module.body {
        cutter.visit_stmt(stmt);
    }
    loop {
        let Some(mut piece) = cutter.pieces.borrow_mut().pop() else { break };
        *cutter.depth.borrow_mut() = 0;
        cutter.visit_expr(&mut piece);
        // `piece` is now at most CUT_DEPTH deep: freeing it recurses that far at most.
    }
}

struct Cutter {
    depth: RefCell<usize>,
    pieces: RefCell<Vec<Expr>>,
}

impl Transformer for Cutter {
    fn visit_expr(&self, expr: &mut Expr) {
        let depth = *self.depth.borrow();
        if depth >= CUT_DEPTH {
            let piece = std::mem::replace(expr, Expr::NoneLiteral(ExprNoneLiteral::default()));
            self.pieces.borrow_mut().push(piece);
            return;
        }
        *self.depth.borrow_mut() += 1;
        transformer::walk_expr(self, expr);
        *self.depth.borrow_mut() -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(source: &str) -> PythonError {
        parse_module(source).unwrap_err()
    }

    #[test]
    fn a_long_operator_chain_is_refused_like_cpython() {
        let source = format!("x = {}\n", vec!["1"; 100_000].join("+"));
        assert_eq!(error(&source).message, "maximum recursion depth exceeded during compilation");
        let source = format!("x = {}\n", vec!["1"; 1_000].join("+"));
        assert!(parse_module(&source).is_ok(), "CPython compiles a chain of 1,000 terms");
    }

    #[test]
    fn deep_unary_attribute_and_call_chains_are_refused() {
        for source in [
            format!("x = {}1\n", "-".repeat(50_000)),
            format!("x = a{}\n", ".b".repeat(50_000)),
            format!("x = f{}\n", "()".repeat(50_000)),
            format!("x = {}1\n", "not ".repeat(50_000)),
            format!("x = {}0\n", "lambda: ".repeat(20_000)),
        ] {
            assert_eq!(error(&source).message, "maximum recursion depth exceeded during compilation");
        }
    }

    #[test]
    fn brackets_and_indentation_have_cpythons_limits() {
        let source = format!("x = {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
        assert_eq!(error(&source), PythonError { message: "too many nested parentheses".into(), line: Some(1) });
        let source = format!("x = {}{}\n", "(".repeat(200), ")".repeat(200));
        assert!(parse_module(&source).is_ok(), "200 levels are allowed");
        let mut source = String::new();
        for level in 0..150 {
            source.push_str(&format!("{}if x:\n", " ".repeat(level)));
        }
        source.push_str(&format!("{}pass\n", " ".repeat(150)));
        assert_eq!(error(&source), PythonError { message: "too many levels of indentation".into(), line: Some(101) });
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let e = error("x = 1\ndef f(:\n");
        assert_eq!(e.line, Some(2));
    }
}
