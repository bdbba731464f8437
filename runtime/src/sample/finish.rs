//! Why a sequence stopped. The string forms are the OpenAI `finish_reason` values (plus
//! `abort` and `error`, which kiln reports for cancelled and failed requests) and are stable:
//! clients match on them.

use serde::{Deserialize, Serialize};

/// The reason a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop string, a stop token id or EOS ended the sequence.
    Stop,
    /// `max_tokens` tokens were generated.
    Length,
    /// The client cancelled the request (or it was dropped).
    Abort,
    /// The engine failed while producing this sequence.
    Error,
}

impl FinishReason {
    /// The wire name: `"stop"`, `"length"`, `"abort"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::FinishReason;

    #[test]
    fn wire_names_match_serde_and_display() {
        for r in [FinishReason::Stop, FinishReason::Length, FinishReason::Abort, FinishReason::Error] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(FinishReason::Length.as_str(), "length");
    }
}
