//! Display labels for call states and outcomes, in the UI's language (`UI_LOCALE`).
//! The seeds' UI is Uzbek; Russian and English are offered too.

use serde_json::{Value, json};

use super::model::{CallState, CallStatus};
use crate::config::Locale;

/// Label of a live state.
pub fn state_label(locale: Locale, state: CallState) -> &'static str {
    use CallState::*;
    match (locale, state) {
        (Locale::Uz, Ringing) => "kelyapti",
        (Locale::Uz, Connected) => "suhbatda",
        (Locale::Uz, Ended) => "yakunlandi",
        (Locale::Uz, Missed) => "javobsiz",
        (Locale::Ru, Ringing) => "входящий",
        (Locale::Ru, Connected) => "разговор",
        (Locale::Ru, Ended) => "завершён",
        (Locale::Ru, Missed) => "пропущен",
        (Locale::En, Ringing) => "ringing",
        (Locale::En, Connected) => "connected",
        (Locale::En, Ended) => "ended",
        (Locale::En, Missed) => "missed",
    }
}

/// Label of an outcome.
pub fn status_label(locale: Locale, status: CallStatus) -> &'static str {
    use CallStatus::*;
    match (locale, status) {
        (Locale::Uz, Answered) => "javob berildi",
        (Locale::Uz, Missed) => "javobsiz",
        (Locale::Uz, Busy) => "band",
        (Locale::Uz, Failed) => "xatolik",
        (Locale::Ru, Answered) => "отвечен",
        (Locale::Ru, Missed) => "пропущен",
        (Locale::Ru, Busy) => "занято",
        (Locale::Ru, Failed) => "ошибка",
        (Locale::En, Answered) => "answered",
        (Locale::En, Missed) => "missed",
        (Locale::En, Busy) => "busy",
        (Locale::En, Failed) => "failed",
    }
}

/// The `labels` object of call JSON: `{"state": ..., "status": ...|null}`.
pub fn labels(locale: Locale, state: CallState, status: Option<CallStatus>) -> Value {
    json!({
        "state": state_label(locale, state),
        "status": status.map(|s| status_label(locale, s)),
    })
}
