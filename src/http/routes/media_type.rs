//! `Content-Type` values read by RFC 9110's grammar (section 8.3.1):
//! `type "/" subtype *( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )`.
//!
//! The `mime` crate refuses the optional whitespace before `;` that the RFC
//! allows (`application/json ; charset=UTF-8`), and a client that sends it
//! must not be told its JSON is not JSON.

use std::borrow::Cow;

/// A parsed media type: its essence and the one parameter the gateway reads.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// The type, as written (compare without case).
    pub type_: &'a str,
    /// The subtype, as written (compare without case).
    pub subtype: &'a str,
    /// The `charset` parameter's value, unquoted.
    pub charset: Option<Cow<'a, str>>,
}

/// Why a value is not a media type.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    /// The type or subtype is missing or not a token.
    #[error("\"{0}\" is not of the form type/subtype")]
    Essence(String),
    /// A parameter is not `name=value` with a token or a quoted string.
    #[error("the parameter \"{0}\" is not of the form name=value")]
    Parameter(String),
    /// `charset` is given more than once.
    #[error("the charset parameter is given more than once")]
    DuplicateCharset,
}

impl<'a> MediaType<'a> {
    /// Reads a header value; surrounding whitespace is allowed.
    pub fn parse(value: &'a str) -> Result<Self, MediaTypeError> {
        let value = trim_ows(value);
        let (essence, mut rest) = value.split_at(value.find(';').unwrap_or(value.len()));
        let essence = trim_ows(essence);
        let (type_, subtype) = essence
            .split_once('/')
            .filter(|(type_, subtype)| is_token(type_) && is_token(subtype))
            .ok_or_else(|| MediaTypeError::Essence(essence.to_owned()))?;
        let mut charset = None;
        while let Some(after) = rest.strip_prefix(';') {
            let (parameter, next) = split_parameter(trim_ows_start(after))?;
            rest = trim_ows_start(next);
            let Some((name, value)) = parameter else {
                continue;
            };
            if name.eq_ignore_ascii_case("charset") && charset.replace(value).is_some() {
                return Err(MediaTypeError::DuplicateCharset);
            }
        }
        Ok(Self {
            type_,
            subtype,
            charset,
        })
    }

    /// Whether this is `type/subtype`, ignoring case as the RFC says.
    pub fn is(&self, type_: &str, subtype: &str) -> bool {
        self.type_.eq_ignore_ascii_case(type_) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

type Parameter<'a> = Option<(&'a str, Cow<'a, str>)>;

/// Splits one parameter (or none: `;;` is allowed) from the text after its `;`.
fn split_parameter(text: &str) -> Result<(Parameter<'_>, &str), MediaTypeError> {
    if text.is_empty() || text.starts_with(';') {
        return Ok((None, text));
    }
    let invalid = || {
        let shown = text.split(';').next().unwrap_or(text);
        MediaTypeError::Parameter(shown.to_owned())
    };
    let (name, after) = text.split_once('=').ok_or_else(invalid)?;
    if !is_token(name) {
        return Err(invalid());
    }
    let (value, rest) = match after.strip_prefix('"') {
        Some(quoted) => unquote(quoted).ok_or_else(invalid)?,
        None => {
            let end = after.find([';', ' ', '\t']).unwrap_or(after.len());
            let (value, rest) = after.split_at(end);
            if !is_token(value) {
                return Err(invalid());
            }
            (Cow::Borrowed(value), rest)
        }
    };
    let rest = trim_ows_start(rest);
    if !rest.is_empty() && !rest.starts_with(';') {
        return Err(invalid());
    }
    Ok((Some((name, value)), rest))
}

/// Reads a quoted string's content up to its closing quote; returns it and
/// what follows.
fn unquote(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut unescaped: Option<String> = None;
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                let value = unescaped.map_or(Cow::Borrowed(&text[..at]), Cow::Owned);
                return Some((value, &text[at + 1..]));
            }
            '\\' => {
                let (_, escaped) = chars.next()?;
                if !is_quoted_text(escaped) && escaped != '"' && escaped != '\\' {
                    return None;
                }
                unescaped
                    .get_or_insert_with(|| text[..at].to_owned())
                    .push(escaped);
            }
            c if is_quoted_text(c) => {
                if let Some(unescaped) = &mut unescaped {
                    unescaped.push(c);
                }
            }
            _ => return None,
        }
    }
    None
}

fn is_quoted_text(c: char) -> bool {
    matches!(c, '\t' | ' ' | '!' | '#'..='[' | ']'..='~')
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

fn trim_ows_start(text: &str) -> &str {
    text.trim_start_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn charset(value: &str) -> Option<String> {
        MediaType::parse(value)
            .unwrap()
            .charset
            .map(Cow::into_owned)
    }

    #[test]
    fn whitespace_is_allowed_around_semicolons_and_the_value() {
        for value in [
            "application/json",
            " application/json ",
            "application/json;charset=utf-8",
            "application/json ; charset=UTF-8",
            "application/json\t;\tcharset=utf-8 ",
            "application/json;;charset=utf-8;",
        ] {
            let media = MediaType::parse(value).unwrap();
            assert!(media.is("application", "json"), "{value}");
        }
        assert_eq!(
            charset("application/json ; charset=UTF-8").unwrap(),
            "UTF-8"
        );
    }

    #[test]
    fn quoted_values_are_unquoted() {
        assert_eq!(charset("text/plain; charset=\"utf-8\"").unwrap(), "utf-8");
        assert_eq!(
            charset("text/plain; name=\"a;b \\\"c\\\"\"; charset=ascii").unwrap(),
            "ascii"
        );
        assert_eq!(charset("text/plain; charset=\"u\\tf-8\"").unwrap(), "utf-8");
        assert_eq!(charset("text/plain; format=flowed"), None);
    }

    #[test]
    fn case_is_ignored_in_the_essence_and_names() {
        let media = MediaType::parse("Application/JSON; CHARSET=utf-8").unwrap();
        assert!(media.is("application", "json"));
        assert_eq!(media.charset.as_deref(), Some("utf-8"));
        assert!(!media.is("application", "problem+json"));
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in [
            "",
            "json",
            "application/",
            "/json",
            "application /json",
            "application/ json",
            "application/json charset=utf-8",
            "application/json; charset",
            "application/json; charset=",
            "application/json; =utf-8",
            "application/json; charset=utf 8",
            "application/json; charset=\"utf-8",
            "application/json; charset=\"utf-8\"x",
            "application/json; charset=utf-8; charset=latin1",
            "application/js(on",
        ] {
            assert!(MediaType::parse(value).is_err(), "{value:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(value in "[ -~\t]{0,40}") {
            let _ = MediaType::parse(&value);
        }

        #[test]
        fn any_whitespace_around_the_semicolon_reads_the_same(
            before in "[ \t]{0,3}",
            after in "[ \t]{0,3}",
        ) {
            let value = format!("application/json{before};{after}charset=utf-8");
            let media = MediaType::parse(&value).unwrap();
            prop_assert!(media.is("application", "json"));
            prop_assert_eq!(media.charset.as_deref(), Some("utf-8"));
        }
    }
}
