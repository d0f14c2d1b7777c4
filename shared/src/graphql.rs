//! A GraphQL syntax check for saved queries (spec c.4), with graphql-core's error wording.
//!
//! Nautobot parses each query file with graphql-core and shows its message (`Syntax Error: Expected Name, found
//! '}'.`, asserted by its tests). No Rust GraphQL crate words its errors that way, so this is a small
//! recursive-descent parser of executable documents (operations and fragments) that reports the first error as
//! graphql-core would, and extracts the variables Nautobot stores: name -> default for string and int literals,
//! `""` otherwise.

use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Syntax Error: {message} (line {line}, column {column})")]
pub struct SyntaxError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Punct(&'static str),
    Name(String),
    Int(String),
    Float(String),
    Str(String),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    line: usize,
    column: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Punct(p) => format!("'{p}'"),
            Kind::Name(n) => format!("Name '{n}'"),
            Kind::Int(v) => format!("Int '{v}'"),
            Kind::Float(v) => format!("Float '{v}'"),
            Kind::Str(v) => format!("String \"{v}\""),
            Kind::Eof => "<EOF>".to_owned(),
        }
    }
}

fn lex(source: &str) -> std::result::Result<Vec<Token>, SyntaxError> {
    let chars: Vec<char> = source.chars().collect();
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    let mut tokens = Vec::new();
    let err = |message: String, at: usize, line: usize, line_start: usize| SyntaxError {
        message,
        line,
        column: at - line_start + 1,
    };
    while i < chars.len() {
        let c = chars[i];
        let column = i - line_start + 1;
        match c {
            '\u{feff}' | ' ' | '\t' | ',' => i += 1,
            '\n' => {
                i += 1;
                line += 1;
                line_start = i;
            }
            '\r' => {
                i += 1;
                if chars.get(i) == Some(&'\n') {
                    i += 1;
                }
                line += 1;
                line_start = i;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                    i += 1;
                }
            }
            '!' | '$' | '&' | '(' | ')' | ':' | '=' | '@' | '[' | ']' | '{' | '|' | '}' => {
                let p = match c {
                    '!' => "!",
                    '$' => "$",
                    '&' => "&",
                    '(' => "(",
                    ')' => ")",
                    ':' => ":",
                    '=' => "=",
                    '@' => "@",
                    '[' => "[",
                    ']' => "]",
                    '{' => "{",
                    '|' => "|",
                    _ => "}",
                };
                tokens.push(Token { kind: Kind::Punct(p), line, column });
                i += 1;
            }
            '.' => {
                if chars.get(i + 1) == Some(&'.') && chars.get(i + 2) == Some(&'.') {
                    tokens.push(Token { kind: Kind::Punct("..."), line, column });
                    i += 3;
                } else {
                    return Err(err("Unexpected character: '.'.".into(), i, line, line_start));
                }
            }
            c if c == '_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < chars.len() && (chars[i] == '_' || chars[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                tokens.push(Token { kind: Kind::Name(chars[start..i].iter().collect()), line, column });
            }
            c if c == '-' || c.is_ascii_digit() => {
                let start = i;
                if chars[i] == '-' {
                    i += 1;
                }
                let digits = |i: &mut usize| {
                    let s = *i;
                    while *i < chars.len() && chars[*i].is_ascii_digit() {
                        *i += 1;
                    }
                    *i > s
                };
                if !digits(&mut i) {
                    let got = chars.get(i).map_or("<EOF>".to_owned(), |c| format!("'{c}'"));
                    return Err(err(format!("Invalid number, expected digit but got: {got}."), i, line, line_start));
                }
                let mut float = false;
                if chars.get(i) == Some(&'.') {
                    float = true;
                    i += 1;
                    if !digits(&mut i) {
                        return Err(err("Invalid number, expected digit.".into(), i, line, line_start));
                    }
                }
                if matches!(chars.get(i), Some('e' | 'E')) {
                    float = true;
                    i += 1;
                    if matches!(chars.get(i), Some('+' | '-')) {
                        i += 1;
                    }
                    if !digits(&mut i) {
                        return Err(err("Invalid number, expected digit.".into(), i, line, line_start));
                    }
                }
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token { kind: if float { Kind::Float(text) } else { Kind::Int(text) }, line, column });
            }
            '"' => {
                let block = chars.get(i + 1) == Some(&'"') && chars.get(i + 2) == Some(&'"');
                let mut value = String::new();
                if block {
                    i += 3;
                    loop {
                        match chars.get(i) {
                            None => return Err(err("Unterminated string.".into(), i, line, line_start)),
                            Some('"') if chars.get(i + 1) == Some(&'"') && chars.get(i + 2) == Some(&'"') => {
                                i += 3;
                                break;
                            }
                            Some('\n') => {
                                value.push('\n');
                                i += 1;
                                line += 1;
                                line_start = i;
                            }
                            Some(c) => {
                                value.push(*c);
                                i += 1;
                            }
                        }
                    }
                } else {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None | Some('\n' | '\r') => {
                                return Err(err("Unterminated string.".into(), i, line, line_start));
                            }
                            Some('"') => {
                                i += 1;
                                break;
                            }
                            Some('\\') => {
                                let escaped = match chars.get(i + 1) {
                                    Some('"') => '"',
                                    Some('\\') => '\\',
                                    Some('/') => '/',
                                    Some('b') => '\u{8}',
                                    Some('f') => '\u{c}',
                                    Some('n') => '\n',
                                    Some('r') => '\r',
                                    Some('t') => '\t',
                                    Some('u') => {
                                        let hex: String = chars.iter().skip(i + 2).take(4).collect();
                                        let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                                        let Some(code) = code else {
                                            return Err(err(
                                                format!("Invalid Unicode escape sequence: '\\u{hex}'."),
                                                i,
                                                line,
                                                line_start,
                                            ));
                                        };
                                        i += 4;
                                        code
                                    }
                                    other => {
                                        let seq = other.map_or(String::new(), |c| c.to_string());
                                        return Err(err(
                                            format!("Invalid character escape sequence: '\\{seq}'."),
                                            i,
                                            line,
                                            line_start,
                                        ));
                                    }
                                };
                                value.push(escaped);
                                i += 2;
                            }
                            Some(c) => {
                                value.push(*c);
                                i += 1;
                            }
                        }
                    }
                }
                tokens.push(Token { kind: Kind::Str(value), line, column });
            }
            other => {
                let shown = if other == '\'' { "\"'\"".to_owned() } else { format!("'{other}'") };
                return Err(err(format!("Unexpected character: {shown}."), i, line, line_start));
            }
        }
    }
    tokens.push(Token { kind: Kind::Eof, line, column: chars.len() - line_start + 1 });
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    variables: Map<String, Value>,
    /// Open selection sets, lists, objects and list types: bounded, so no query can exhaust the stack.
    depth: usize,
}

/// Deepest nesting of selection sets, values and types a query may have. graphql-core has no limit of its own but
/// runs out of Python's recursion limit near this depth; a query this deep is not a real query.
pub const MAX_DEPTH: usize = 200;

type Result<T> = std::result::Result<T, SyntaxError>;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn at(&self, p: &str) -> bool {
        matches!(&self.peek().kind, Kind::Punct(q) if *q == p)
    }

    fn at_name(&self, name: &str) -> bool {
        matches!(&self.peek().kind, Kind::Name(n) if n == name)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        token
    }

    fn error(&self, token: &Token, message: String) -> SyntaxError {
        SyntaxError { message, line: token.line, column: token.column }
    }

    fn unexpected(&self) -> SyntaxError {
        let token = self.peek();
        self.error(token, format!("Unexpected {}.", token.describe()))
    }

    fn expect(&mut self, p: &'static str) -> Result<()> {
        if self.at(p) {
            self.advance();
            Ok(())
        } else {
            let token = self.peek().clone();
            Err(self.error(&token, format!("Expected '{p}', found {}.", token.describe())))
        }
    }

    /// Enters one level of nesting; refused past [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let token = self.peek().clone();
            return Err(self.error(&token, format!("Query nests deeper than {MAX_DEPTH} levels.")));
        }
        Ok(())
    }

    fn name(&mut self) -> Result<String> {
        let token = self.peek().clone();
        if let Kind::Name(n) = &token.kind {
            self.advance();
            Ok(n.clone())
        } else {
            Err(self.error(&token, format!("Expected Name, found {}.", token.describe())))
        }
    }

    fn document(&mut self) -> Result<()> {
        loop {
            self.definition()?;
            if matches!(self.peek().kind, Kind::Eof) {
                return Ok(());
            }
        }
    }

    fn definition(&mut self) -> Result<()> {
        if self.at("{") {
            return self.selection_set();
        }
        match &self.peek().kind {
            Kind::Name(n) if matches!(n.as_str(), "query" | "mutation" | "subscription") => {
                self.advance();
                if matches!(self.peek().kind, Kind::Name(_)) {
                    self.name()?;
                }
                if self.at("(") {
                    self.variable_definitions()?;
                }
                self.directives(false)?;
                self.selection_set()
            }
            Kind::Name(n) if n == "fragment" => {
                self.advance();
                if self.at_name("on") {
                    return Err(self.unexpected());
                }
                self.name()?;
                self.expect_keyword("on")?;
                self.name()?;
                self.directives(false)?;
                self.selection_set()
            }
            _ => Err(self.unexpected()),
        }
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<()> {
        if self.at_name(keyword) {
            self.advance();
            Ok(())
        } else {
            let token = self.peek().clone();
            Err(self.error(&token, format!("Expected \"{keyword}\", found {}.", token.describe())))
        }
    }

    fn variable_definitions(&mut self) -> Result<()> {
        self.expect("(")?;
        loop {
            self.expect("$")?;
            let name = self.name()?;
            self.expect(":")?;
            self.type_ref()?;
            let default = if self.at("=") {
                self.advance();
                let token = self.peek().clone();
                self.value(true)?;
                match token.kind {
                    Kind::Str(s) => Value::String(s),
                    Kind::Int(i) => Value::String(i),
                    _ => Value::String(String::new()),
                }
            } else {
                Value::String(String::new())
            };
            self.variables.insert(name, default);
            self.directives(true)?;
            if self.at(")") {
                self.advance();
                return Ok(());
            }
        }
    }

    fn type_ref(&mut self) -> Result<()> {
        if self.at("[") {
            self.advance();
            self.enter()?;
            self.type_ref()?;
            self.depth -= 1;
            self.expect("]")?;
        } else {
            self.name()?;
        }
        if self.at("!") {
            self.advance();
        }
        Ok(())
    }

    fn directives(&mut self, constant: bool) -> Result<()> {
        while self.at("@") {
            self.advance();
            self.name()?;
            if self.at("(") {
                self.arguments(constant)?;
            }
        }
        Ok(())
    }

    fn arguments(&mut self, constant: bool) -> Result<()> {
        self.expect("(")?;
        loop {
            self.name()?;
            self.expect(":")?;
            self.value(constant)?;
            if self.at(")") {
                self.advance();
                return Ok(());
            }
        }
    }

    fn selection_set(&mut self) -> Result<()> {
        self.expect("{")?;
        self.enter()?;
        loop {
            self.selection()?;
            if self.at("}") {
                self.advance();
                self.depth -= 1;
                return Ok(());
            }
        }
    }

    fn selection(&mut self) -> Result<()> {
        if self.at("...") {
            self.advance();
            let named_spread = matches!(&self.peek().kind, Kind::Name(n) if n != "on");
            if named_spread {
                self.name()?;
                return self.directives(false);
            }
            if self.at_name("on") {
                self.advance();
                self.name()?;
            }
            self.directives(false)?;
            return self.selection_set();
        }
        self.name()?;
        if self.at(":") {
            self.advance();
            self.name()?;
        }
        if self.at("(") {
            self.arguments(false)?;
        }
        self.directives(false)?;
        if self.at("{") {
            self.selection_set()?;
        }
        Ok(())
    }

    fn value(&mut self, constant: bool) -> Result<()> {
        self.enter()?;
        let value = self.value_inner(constant);
        self.depth -= 1;
        value
    }

    fn value_inner(&mut self, constant: bool) -> Result<()> {
        let token = self.peek().clone();
        match &token.kind {
            Kind::Punct("[") => {
                self.advance();
                while !self.at("]") {
                    if matches!(self.peek().kind, Kind::Eof) {
                        return Err(self.unexpected());
                    }
                    self.value(constant)?;
                }
                self.advance();
                Ok(())
            }
            Kind::Punct("{") => {
                self.advance();
                while !self.at("}") {
                    self.name()?;
                    self.expect(":")?;
                    self.value(constant)?;
                }
                self.advance();
                Ok(())
            }
            Kind::Punct("$") if !constant => {
                self.advance();
                self.name().map(drop)
            }
            Kind::Punct("$") => {
                self.advance();
                let name = self.name()?;
                Err(self.error(&token, format!("Unexpected variable '${name}' in constant value.")))
            }
            Kind::Int(_) | Kind::Float(_) | Kind::Str(_) | Kind::Name(_) => {
                self.advance();
                Ok(())
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// Parses a query document; returns its variables (name -> default) or the first syntax error.
pub fn parse_query(source: &str) -> std::result::Result<Map<String, Value>, SyntaxError> {
    let mut parser = Parser { tokens: lex(source)?, pos: 0, variables: Map::new(), depth: 0 };
    parser.document()?;
    Ok(parser.variables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nautobots_fixture_error() {
        // graphql_queries/bad_device_names.gql of Nautobot's invalid-files fixture.
        let err = parse_query("{\n    device {\n\n    \n}\n").unwrap_err();
        assert!(err.to_string().starts_with("Syntax Error: Expected Name, found '}'"), "{err}");
        assert_eq!((err.line, err.column), (5, 1));
        let err = parse_query("query {\n  devices {\n  }\n}\n").unwrap_err();
        assert_eq!(err.to_string(), "Syntax Error: Expected Name, found '}'. (line 3, column 3)");
    }

    #[test]
    fn valid_queries_and_variables() {
        let q = r#"
            # interfaces of one device
            query DeviceInterfaces($device: String = "edge-1", $limit: Int = 5, $tags: [String!], $on: Boolean = true) {
              devices(name: $device, limit: $limit) @include(if: $on) {
                name
                primary: primary_ip4 { address }
                interfaces(filter: {enabled: true, names: ["a", "b"]}) { ...IfFields ... on Interface { mtu } }
              }
            }
            fragment IfFields on Interface { name, description }
        "#;
        let vars = parse_query(q).unwrap();
        assert_eq!(Value::Object(vars), json!({"device": "edge-1", "limit": "5", "tags": "", "on": ""}));
        assert!(parse_query("{ devices { name } }").unwrap().is_empty());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("query {{ {} b {} }}", "a { ".repeat(50_000), "} ".repeat(50_000));
        let err = parse_query(&deep).unwrap_err();
        assert_eq!(err.message, format!("Query nests deeper than {MAX_DEPTH} levels."));
        let deep_value = format!("query {{ a(x: {}1{}) }}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(parse_query(&deep_value).unwrap_err().message.contains("nests deeper"));
        let deep_type = format!("query q($v: {}Int{}) {{ a }}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(parse_query(&deep_type).unwrap_err().message.contains("nests deeper"));
        let fine = format!("query {{ {} b {} }}", "a { ".repeat(100), "} ".repeat(100));
        assert!(parse_query(&fine).is_ok());
    }

    #[test]
    fn graphql_core_wording() {
        assert_eq!(parse_query("").unwrap_err().message, "Unexpected <EOF>.");
        assert_eq!(parse_query("{ a(x: %) }").unwrap_err().message, "Unexpected character: '%'.");
        assert_eq!(parse_query("{ a(x: \"open) }").unwrap_err().message, "Unterminated string.");
        assert_eq!(parse_query("nonsense { a }").unwrap_err().message, "Unexpected Name 'nonsense'.");
        assert_eq!(parse_query("{ a: }").unwrap_err().message, "Expected Name, found '}'.");
    }
}
