//! Flink SQL statements, parsed: the DDL Flink adds to SQL (`WATERMARK FOR`, computed columns,
//! `PRIMARY KEY ... NOT ENFORCED`, `WITH (...)` options, `ROW<...>` types) is read here on
//! top of sqlparser's tokenizer and expression parser; queries are sqlparser's own `Query`.
//!
//! Every error names its line and column, as the user's file numbers them.

use super::{at, sql_error, Located};
use crate::error::Result;
use datafusion::sql::sqlparser::ast::{Expr, Ident, Query};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// One statement of a script.
#[derive(Debug, Clone)]
pub(crate) enum Statement {
    /// `CREATE [TEMPORARY] TABLE`.
    CreateTable(Box<TableDef>),
    /// `CREATE [TEMPORARY] VIEW name [(columns)] AS query`.
    CreateView {
        name: Located<String>,
        columns: Vec<Ident>,
        query: Box<Query>,
    },
    /// `SET 'key' = 'value'`.
    Set { key: Located<String>, value: String },
    /// `INSERT INTO table [(columns)] query`.
    Insert {
        table: Located<String>,
        columns: Vec<Ident>,
        query: Box<Query>,
    },
    /// A query on its own: its rows are printed.
    Query(Box<Query>),
    /// `EXPLAIN` of an INSERT or a query.
    Explain(Box<Statement>),
}

/// A `CREATE TABLE`.
#[derive(Debug, Clone)]
pub(crate) struct TableDef {
    pub name: Located<String>,
    /// Physical and computed columns, in the order declared.
    pub columns: Vec<ColumnDef>,
    /// `WATERMARK FOR column AS expr`.
    pub watermark: Option<WatermarkDef>,
    /// `PRIMARY KEY (..) NOT ENFORCED`.
    pub primary_key: Vec<String>,
    /// `WITH ('key' = 'value', ...)`, in order.
    pub options: Vec<(Located<String>, String)>,
}

/// A column of a table.
#[derive(Debug, Clone)]
pub(crate) struct ColumnDef {
    pub name: Located<String>,
    pub kind: ColumnKind,
}

/// What a column is.
#[derive(Debug, Clone)]
pub(crate) enum ColumnKind {
    /// Read from the connector.
    Physical(SqlType),
    /// `name AS expr`: computed from the others.
    Computed(Box<Expr>),
}

/// `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkDef {
    pub column: Located<String>,
    pub expr: Expr,
}

/// A column type, as far as Oxflow's connectors carry it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlType {
    /// A scalar, by the name job specs use (`int64`, `string`, ...).
    Scalar(&'static str),
    /// `ROW<name type, ...>`.
    Row(Vec<(String, SqlType)>),
}

impl SqlType {
    /// The type as Flink writes it, for messages.
    pub fn describe(&self) -> String {
        match self {
            SqlType::Scalar(s) => match *s {
                "int64" => "BIGINT",
                "int32" => "INT",
                "float64" => "DOUBLE",
                "bool" => "BOOLEAN",
                "string" => "STRING",
                _ => "TIMESTAMP(3)",
            }
            .to_string(),
            SqlType::Row(fields) => format!(
                "ROW<{}>",
                fields
                    .iter()
                    .map(|(n, t)| format!("{n} {}", t.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Parses a script of statements separated by semicolons.
pub(crate) fn parse_script(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| sql_error(e.to_string()))?;
    let mut parser =
        Parser::new(&dialect).with_tokens_with_locations(without_table_arguments(tokens));
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            return Ok(statements);
        }
        statements.push(statement(&mut parser)?);
        let next = parser.peek_token();
        if !matches!(next.token, Token::SemiColon | Token::EOF) {
            return Err(at(
                next.span.start,
                format!("expected `;` after the statement, found `{}`", next.token),
            ));
        }
    }
}

/// Flink's window table functions take their input as `TABLE name`
/// (`TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND)`), which sqlparser does not
/// read as an argument: the `TABLE` keyword right after `(`, `,` or `=>` and before a name is
/// dropped, so the argument reads as the table's name.
fn without_table_arguments(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let mut drop = vec![false; tokens.len()];
    for (k, &i) in significant.iter().enumerate() {
        let is_table = matches!(&tokens[i].token, Token::Word(w) if w.keyword == Keyword::TABLE && w.quote_style.is_none());
        let after_open = k > 0
            && matches!(
                tokens[significant[k - 1]].token,
                Token::LParen | Token::Comma | Token::RArrow
            );
        let before_name = significant
            .get(k + 1)
            .is_some_and(|&j| matches!(tokens[j].token, Token::Word(_)));
        drop[i] = is_table && after_open && before_name;
    }
    tokens
        .into_iter()
        .zip(drop)
        .filter_map(|(t, d)| (!d).then_some(t))
        .collect()
}

fn parser_error(e: ParserError) -> crate::OxflowError {
    sql_error(e.to_string())
}

fn word_is(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.value.eq_ignore_ascii_case(word) && w.quote_style.is_none())
}

/// Consumes `word` (a keyword sqlparser may not know) if it comes next.
fn parse_word(p: &mut Parser, word: &str) -> bool {
    if word_is(&p.peek_token().token, word) {
        p.next_token();
        true
    } else {
        false
    }
}

fn expect_word(p: &mut Parser, word: &str) -> Result<()> {
    let next = p.peek_token();
    if parse_word(p, word) {
        Ok(())
    } else {
        Err(at(
            next.span.start,
            format!("expected {word}, found `{}`", next.token),
        ))
    }
}

fn expect(p: &mut Parser, token: Token) -> Result<()> {
    p.expect_token(&token).map(|_| ()).map_err(parser_error)
}

fn located_ident(p: &mut Parser) -> Result<Located<String>> {
    let start = p.peek_token().span.start;
    let ident = p.parse_identifier().map_err(parser_error)?;
    Ok(Located::new(ident.value, start))
}

/// A (possibly qualified) object name; Oxflow has one catalog and database, so only the last
/// part names the object.
fn object_name(p: &mut Parser) -> Result<Located<String>> {
    let start = p.peek_token().span.start;
    let name = p.parse_object_name(false).map_err(parser_error)?;
    let last = name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .map(|i| i.value.clone())
        .ok_or_else(|| at(start, format!("`{name}` is not a table name")))?;
    Ok(Located::new(last, start))
}

/// `a, b, c)`: names up to the closing parenthesis (the opening one is read).
fn identifiers(p: &mut Parser) -> Result<Vec<Ident>> {
    let names = p
        .parse_comma_separated(|p| p.parse_identifier())
        .map_err(parser_error)?;
    expect(p, Token::RParen)?;
    Ok(names)
}

fn string_literal(p: &mut Parser) -> Result<String> {
    p.parse_literal_string().map_err(parser_error)
}

fn statement(p: &mut Parser) -> Result<Statement> {
    let first = p.peek_token();
    let unsupported = |what: &str| {
        Err(at(
            first.span.start,
            format!("{what} is not supported; Oxflow runs CREATE TABLE, CREATE [TEMPORARY] VIEW, SET, INSERT INTO, EXPLAIN and queries"),
        ))
    };
    if parse_word(p, "EXPLAIN") {
        // Flink's `EXPLAIN PLAN FOR` and detail options read as plain EXPLAIN.
        if parse_word(p, "PLAN") {
            expect_word(p, "FOR")?;
        }
        let inner = statement(p)?;
        return match inner {
            Statement::Insert { .. } | Statement::Query(_) => {
                Ok(Statement::Explain(Box::new(inner)))
            }
            _ => Err(at(
                first.span.start,
                "EXPLAIN takes an INSERT INTO or a query",
            )),
        };
    }
    if parse_word(p, "CREATE") {
        // A temporary view or table lives as long as the session, as every one does here.
        parse_word(p, "TEMPORARY");
        if parse_word(p, "TABLE") {
            return create_table(p).map(|t| Statement::CreateTable(Box::new(t)));
        }
        if parse_word(p, "VIEW") {
            if p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]) {
                return Err(at(
                    first.span.start,
                    "CREATE VIEW IF NOT EXISTS is not supported: a script names each view once",
                ));
            }
            let name = object_name(p)?;
            let columns = if p.consume_token(&Token::LParen) {
                identifiers(p)?
            } else {
                Vec::new()
            };
            if parse_word(p, "COMMENT") {
                string_literal(p)?;
            }
            expect_word(p, "AS")?;
            let query = p.parse_query().map_err(parser_error)?;
            return Ok(Statement::CreateView {
                name,
                columns,
                query,
            });
        }
        return unsupported("this CREATE statement");
    }
    if parse_word(p, "SET") {
        let key_at = p.peek_token().span.start;
        let key = set_part(p)?;
        expect(p, Token::Eq)?;
        let value = set_part(p)?;
        return Ok(Statement::Set {
            key: Located::new(key, key_at),
            value,
        });
    }
    if parse_word(p, "INSERT") {
        if parse_word(p, "OVERWRITE") {
            return unsupported("INSERT OVERWRITE");
        }
        expect_word(p, "INTO")?;
        let table = object_name(p)?;
        let columns = if p.peek_token().token == Token::LParen
            && !matches!(p.peek_nth_token(1).token, Token::Word(ref w) if w.keyword == Keyword::SELECT || w.keyword == Keyword::WITH)
        {
            p.next_token();
            identifiers(p)?
        } else {
            Vec::new()
        };
        let query = p.parse_query().map_err(parser_error)?;
        return Ok(Statement::Insert {
            table,
            columns,
            query,
        });
    }
    match &first.token {
        Token::Word(w) if matches!(w.keyword, Keyword::SELECT | Keyword::WITH) => {
            Ok(Statement::Query(p.parse_query().map_err(parser_error)?))
        }
        Token::LParen => Ok(Statement::Query(p.parse_query().map_err(parser_error)?)),
        Token::Word(w) if ["BEGIN", "EXECUTE"].contains(&w.value.to_ascii_uppercase().as_str()) => {
            unsupported("a STATEMENT SET (more than one INSERT as one job)")
        }
        other => unsupported(&format!("`{other}`")),
    }
}

/// A key or value of `SET`: quoted as Flink documents it, or a bare word or number.
fn set_part(p: &mut Parser) -> Result<String> {
    let next = p.next_token();
    match next.token {
        Token::SingleQuotedString(s) => Ok(s),
        Token::Word(w) => {
            // A bare dotted key such as table.exec.state.ttl.
            let mut key = w.value;
            while p.consume_token(&Token::Period) {
                let part = p.next_token();
                key.push('.');
                key.push_str(&part.token.to_string());
            }
            Ok(key)
        }
        Token::Number(n, _) => Ok(n),
        other => Err(at(
            next.span.start,
            format!("expected a quoted key or value, found `{other}`"),
        )),
    }
}

fn create_table(p: &mut Parser) -> Result<TableDef> {
    if p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]) {
        let here = p.peek_token().span.start;
        return Err(at(
            here,
            "CREATE TABLE IF NOT EXISTS is not supported: a script names each table once",
        ));
    }
    let name = object_name(p)?;
    expect(p, Token::LParen)?;
    let mut def = TableDef {
        name,
        columns: Vec::new(),
        watermark: None,
        primary_key: Vec::new(),
        options: Vec::new(),
    };
    loop {
        table_element(p, &mut def)?;
        if p.consume_token(&Token::Comma) {
            continue;
        }
        expect(p, Token::RParen)?;
        break;
    }
    if parse_word(p, "COMMENT") {
        string_literal(p)?;
    }
    let next = p.peek_token();
    if word_is(&next.token, "PARTITIONED") || word_is(&next.token, "LIKE") {
        return Err(at(
            next.span.start,
            format!("`{}` in CREATE TABLE is not supported", next.token),
        ));
    }
    if !parse_word(p, "WITH") {
        return Err(at(
            next.span.start,
            format!(
                "expected WITH ('connector' = ...) after the columns of table `{}`, found `{}`",
                def.name.value, next.token
            ),
        ));
    }
    expect(p, Token::LParen)?;
    loop {
        let key_at = p.peek_token().span.start;
        let key = string_literal(p)?;
        expect(p, Token::Eq)?;
        let value = string_literal(p)?;
        if def.options.iter().any(|(k, _)| k.value == key) {
            return Err(at(key_at, format!("option '{key}' is given twice")));
        }
        def.options.push((Located::new(key, key_at), value));
        if p.consume_token(&Token::Comma) {
            continue;
        }
        expect(p, Token::RParen)?;
        break;
    }
    Ok(def)
}

fn table_element(p: &mut Parser, def: &mut TableDef) -> Result<()> {
    let start = p.peek_token();
    if parse_word(p, "WATERMARK") {
        expect_word(p, "FOR")?;
        let column = located_ident(p)?;
        expect_word(p, "AS")?;
        let expr = p.parse_expr().map_err(parser_error)?;
        if def.watermark.is_some() {
            return Err(at(start.span.start, "a table has at most one WATERMARK"));
        }
        def.watermark = Some(WatermarkDef { column, expr });
        return Ok(());
    }
    if parse_word(p, "CONSTRAINT") {
        located_ident(p)?;
    }
    if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
        expect(p, Token::LParen)?;
        let keys = identifiers(p)?;
        not_enforced(p)?;
        def.primary_key = keys.into_iter().map(|k| k.value).collect();
        return Ok(());
    }
    let name = located_ident(p)?;
    if def.columns.iter().any(|c| c.name.value == name.value) {
        return Err(at(
            name.at,
            format!("column `{}` is declared twice", name.value),
        ));
    }
    if parse_word(p, "AS") {
        let expr = p.parse_expr().map_err(parser_error)?;
        if parse_word(p, "COMMENT") {
            string_literal(p)?;
        }
        def.columns.push(ColumnDef {
            name,
            kind: ColumnKind::Computed(Box::new(expr)),
        });
        return Ok(());
    }
    let ty = data_type(p)?;
    let next = p.peek_token();
    if word_is(&next.token, "METADATA") {
        return Err(at(
            next.span.start,
            format!(
                "column `{}`: METADATA columns are not supported",
                name.value
            ),
        ));
    }
    if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
        not_enforced(p)?;
        def.primary_key = vec![name.value.clone()];
    }
    if parse_word(p, "COMMENT") {
        string_literal(p)?;
    }
    def.columns.push(ColumnDef {
        name,
        kind: ColumnKind::Physical(ty),
    });
    Ok(())
}

fn not_enforced(p: &mut Parser) -> Result<()> {
    let here = p.peek_token().span.start;
    if parse_word(p, "NOT") && parse_word(p, "ENFORCED") {
        Ok(())
    } else {
        Err(at(
            here,
            "a PRIMARY KEY must be declared NOT ENFORCED (Flink does not check keys)",
        ))
    }
}

/// The types Oxflow's connectors read and write.
const SUPPORTED_TYPES: &str =
    "BOOLEAN, INT, BIGINT, DOUBLE, STRING, VARCHAR(n), CHAR(n), TIMESTAMP(p), TIMESTAMP_LTZ(p), and ROW<...> for the nexmark connector";

fn data_type(p: &mut Parser) -> Result<SqlType> {
    let token = p.next_token();
    let start = token.span.start;
    let Token::Word(word) = &token.token else {
        return Err(at(
            start,
            format!("expected a type, found `{}`", token.token),
        ));
    };
    let name = word.value.to_ascii_uppercase();
    let ty = match name.as_str() {
        "BOOLEAN" | "BOOL" => SqlType::Scalar("bool"),
        "INT" | "INTEGER" => SqlType::Scalar("int32"),
        "BIGINT" => SqlType::Scalar("int64"),
        "DOUBLE" => {
            parse_word(p, "PRECISION");
            SqlType::Scalar("float64")
        }
        "STRING" => SqlType::Scalar("string"),
        "VARCHAR" | "CHAR" => {
            type_precision(p)?;
            SqlType::Scalar("string")
        }
        "TIMESTAMP" | "TIMESTAMP_LTZ" => {
            // Oxflow keeps event time in milliseconds whatever the precision.
            type_precision(p)?;
            if parse_word(p, "WITHOUT") || parse_word(p, "WITH") {
                parse_word(p, "LOCAL");
                expect_word(p, "TIME")?;
                expect_word(p, "ZONE")?;
            }
            SqlType::Scalar("timestamp_ms")
        }
        "ROW" => {
            let close = if p.consume_token(&Token::Lt) {
                Token::Gt
            } else {
                expect(p, Token::LParen)?;
                Token::RParen
            };
            let mut fields = Vec::new();
            loop {
                let field = located_ident(p)?;
                let ty = data_type(p)?;
                if matches!(ty, SqlType::Row(_)) {
                    return Err(at(field.at, "nested ROW types are not supported"));
                }
                if parse_word(p, "COMMENT") {
                    string_literal(p)?;
                }
                fields.push((field.value, ty));
                if p.consume_token(&Token::Comma) {
                    continue;
                }
                expect(p, close)?;
                break;
            }
            SqlType::Row(fields)
        }
        _ => {
            return Err(at(
                start,
                format!(
                    "type `{}` is not supported; use {SUPPORTED_TYPES}",
                    word.value
                ),
            ))
        }
    };
    // Nullability is not tracked: every column may hold NULL.
    let _ = p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) || p.parse_keyword(Keyword::NULL);
    Ok(ty)
}

/// An optional `(n)` after a type name.
fn type_precision(p: &mut Parser) -> Result<Option<u64>> {
    if !p.consume_token(&Token::LParen) {
        return Ok(None);
    }
    let next = p.next_token();
    let n = match &next.token {
        Token::Number(n, _) => n.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        at(
            next.span.start,
            format!("expected a number, found `{}`", next.token),
        )
    })?;
    expect(p, Token::RParen)?;
    Ok(Some(n))
}

/// Where an expression starts, if sqlparser knows.
pub(crate) fn expr_start(expr: &Expr) -> Location {
    use datafusion::sql::sqlparser::ast::Spanned;
    expr.span().start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flink_ddl_parses() {
        let script = r#"
            -- the events
            CREATE TABLE datagen (
                event_type int,
                bid ROW<auction BIGINT, dateTime TIMESTAMP(3)>,
                dateTime AS CASE WHEN event_type = 2 THEN bid.dateTime END,
                WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND,
                PRIMARY KEY (event_type) NOT ENFORCED
            ) WITH ('connector' = 'nexmark', 'events.num' = '1000');
            SET 'parallelism.default' = '2';
            CREATE TEMPORARY VIEW bid AS SELECT bid.auction, dateTime FROM datagen WHERE event_type = 2;
            INSERT INTO out SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND));
            EXPLAIN SELECT 1;
        "#;
        let statements = parse_script(script).unwrap();
        assert_eq!(statements.len(), 5);
        let Statement::CreateTable(t) = &statements[0] else {
            panic!("{statements:?}")
        };
        assert_eq!(t.columns.len(), 3);
        assert_eq!(t.columns[0].name.at.line, 4);
        assert_eq!(t.watermark.as_ref().unwrap().column.value, "dateTime");
        assert_eq!(t.primary_key, vec!["event_type"]);
        assert_eq!(t.options[1].1, "1000");
        assert!(
            matches!(&statements[1], Statement::Set { key, value } if key.value == "parallelism.default" && value == "2")
        );
        assert!(matches!(&statements[3], Statement::Insert { table, .. } if table.value == "out"));
        assert!(matches!(&statements[4], Statement::Explain(_)));
    }

    #[test]
    fn errors_name_line_and_column() {
        let err =
            parse_script("CREATE TABLE t (\n  a DECIMAL(10, 2)\n) WITH ('connector' = 'print')")
                .unwrap_err()
                .to_string();
        assert!(err.contains("line 2, column 5"), "{err}");
        assert!(err.contains("type `DECIMAL` is not supported"), "{err}");
        let err = parse_script("SELECT a FROM t\nSELECT b FROM t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 1"), "{err}");
        let err = parse_script("DROP TABLE t").unwrap_err().to_string();
        assert!(
            err.contains("line 1, column 1") && err.contains("not supported"),
            "{err}"
        );
        let err = parse_script("CREATE TABLE t (a INT) WITH ('x' = '1', 'x' = '2')")
            .unwrap_err()
            .to_string();
        assert!(err.contains("column 41") && err.contains("twice"), "{err}");
    }
}
