//! Where a bundle comes from: a file on the device or an `http://` URL, read as a
//! stream (nothing is staged: the bundle is verified and written as it arrives).

use std::fs::File;
use std::io::Read;
use std::time::Duration;

/// A bundle source that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{0}: only http:// URLs are supported; the bundle's signature, not the transport, is what makes it trusted — serve it over http or copy the file onto the device")]
    Scheme(String),
}

/// Opens `spec`: a URL (`http://…`) or a path.
pub fn open(spec: &str) -> Result<Box<dyn Read>, SourceError> {
    if spec.starts_with("http://") {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .build();
        let response = agent.get(spec).call().map_err(|err| SourceError::Http {
            url: spec.to_string(),
            message: match err {
                ureq::Error::Status(code, response) => {
                    format!("server answered {code} {}", response.status_text())
                }
                ureq::Error::Transport(transport) => transport.to_string(),
            },
        })?;
        Ok(Box::new(response.into_reader()))
    } else if spec.contains("://") {
        Err(SourceError::Scheme(spec.to_string()))
    } else {
        let file = File::open(spec).map_err(|source| SourceError::File {
            path: spec.to_string(),
            source,
        })?;
        Ok(Box::new(file))
    }
}
