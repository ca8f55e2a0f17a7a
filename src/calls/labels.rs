//! Display labels for call states and outcomes, in the UI's language (`UI_LOCALE`), and the
//! API JSON of a call record that carries them ([`CallRecord::to_json`]). The seeds' UI is
//! Uzbek; Russian and English are offered too.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::model::{CallRecord, CallState, CallStatus};
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

impl CallRecord {
    /// The record as API JSON, with `labels` in `locale` and, for a live call, `duration`
    /// counted up to `now`.
    pub fn to_json(&self, locale: Locale, now: DateTime<Utc>) -> Value {
        let mut rec = self.clone();
        if rec.end_time.is_none() {
            rec.duration = Self::whole_seconds(rec.start_time, now);
            if let Some(a) = rec.answer_time {
                rec.billsec = Self::whole_seconds(a, now);
            }
        }
        let mut v = serde_json::to_value(&rec).expect("call record serializes");
        v["labels"] = labels(locale, rec.state, rec.status);
        v
    }
}
