//! Settings that may be left out by configuring them as `""`.

use std::path::{Path, PathBuf};

use actix_web::http::header::HeaderName;
use serde::{Deserialize, Serialize};

/// A file path, or none when configured as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub struct OptionalPath(Option<PathBuf>);

impl OptionalPath {
    /// The path, when one is configured.
    pub fn get(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl From<String> for OptionalPath {
    fn from(value: String) -> Self {
        Self((!value.trim().is_empty()).then(|| PathBuf::from(value)))
    }
}

impl From<OptionalPath> for String {
    fn from(path: OptionalPath) -> Self {
        path.0
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A header name, or none when configured as `""`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OptionalHeader(Option<HeaderName>);

impl OptionalHeader {
    /// The header, when one is configured.
    pub fn get(&self) -> Option<&HeaderName> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for OptionalHeader {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.trim().is_empty() {
            return Ok(Self(None));
        }
        HeaderName::from_bytes(value.trim().as_bytes())
            .map(|name| Self(Some(name)))
            .map_err(|_| format!("{value:?} is not a valid header name"))
    }
}

impl From<OptionalHeader> for String {
    fn from(header: OptionalHeader) -> Self {
        header.0.map(|name| name.to_string()).unwrap_or_default()
    }
}
