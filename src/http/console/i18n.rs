//! The console's words in Uzbek (the default, the seeds' language), Russian and English.
//! Call states and outcomes use the seeds' labels from [`crate::calls::labels`], so the
//! console and the API say the same thing. Pages get a [`Strings`] for their template, and
//! the same table as JSON (a `data-i18n` attribute) for the words the script writes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::calls::labels::{state_label, status_label};
use crate::calls::{CallState, CallStatus};
use crate::config::Locale;

/// Every word the console shows, in one language.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strings {
    /// `uz`, `ru` or `en` (the `lang` attribute).
    pub lang: &'static str,
    pub app: &'static str,
    pub skip: &'static str,
    pub nav_dashboard: &'static str,
    pub nav_extensions: &'static str,
    pub nav_live: &'static str,
    pub nav_history: &'static str,
    pub language: &'static str,
    pub switch: &'static str,
    pub logout: &'static str,
    pub login_title: &'static str,
    pub username: &'static str,
    pub password: &'static str,
    pub sign_in: &'static str,
    pub login_failed: &'static str,
    pub too_many: &'static str,
    pub extensions_title: &'static str,
    pub new_extension: &'static str,
    pub extension: &'static str,
    pub display_name: &'static str,
    pub context: &'static str,
    pub transport: &'static str,
    pub codecs: &'static str,
    pub max_contacts: &'static str,
    pub enabled: &'static str,
    pub disabled: &'static str,
    pub provisioning: &'static str,
    pub registration: &'static str,
    pub actions: &'static str,
    pub password_hint: &'static str,
    pub save: &'static str,
    pub cancel: &'static str,
    pub close: &'static str,
    pub edit: &'static str,
    pub enable: &'static str,
    pub disable: &'static str,
    pub delete: &'static str,
    pub status: &'static str,
    pub confirm_delete: &'static str,
    pub secret_title: &'static str,
    pub secret_once: &'static str,
    pub copy: &'static str,
    pub copied: &'static str,
    pub sip_server: &'static str,
    pub sip_port: &'static str,
    pub auth_username: &'static str,
    pub online: &'static str,
    pub offline: &'static str,
    pub unknown: &'static str,
    pub prov_pending: &'static str,
    pub prov_applied: &'static str,
    pub prov_failed: &'static str,
    pub contacts: &'static str,
    pub user_agent: &'static str,
    pub rtt: &'static str,
    pub expires: &'static str,
    pub active_channels: &'static str,
    pub no_contacts: &'static str,
    pub live_title: &'static str,
    pub live_connected: &'static str,
    pub live_reconnecting: &'static str,
    pub caller: &'static str,
    pub agent: &'static str,
    pub no_calls: &'static str,
    pub history_title: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub direction: &'static str,
    pub inbound: &'static str,
    pub outbound: &'static str,
    pub internal: &'static str,
    pub any: &'static str,
    pub number: &'static str,
    pub source: &'static str,
    pub apply: &'static str,
    pub csv: &'static str,
    pub time: &'static str,
    pub duration: &'static str,
    pub billsec: &'static str,
    pub recording: &'static str,
    pub play: &'static str,
    pub prev: &'static str,
    pub next: &'static str,
    pub of: &'static str,
    pub dashboard_title: &'static str,
    pub today_total: &'static str,
    pub answer_rate: &'static str,
    pub per_hour: &'static str,
    pub per_extension: &'static str,
    pub forbidden: &'static str,
    pub error: &'static str,
    /// Call states (`ringing`, `connected`, `ended`, `missed`) → the seeds' labels.
    pub states: BTreeMap<&'static str, &'static str>,
    /// Outcomes (`answered`, `missed`, `busy`, `failed`) → the seeds' labels.
    pub statuses: BTreeMap<&'static str, &'static str>,
}

/// The language of `code` (`uz`, `ru`, `en`), if it is one.
pub fn parse_locale(code: &str) -> Option<Locale> {
    match code {
        "uz" => Some(Locale::Uz),
        "ru" => Some(Locale::Ru),
        "en" => Some(Locale::En),
        _ => None,
    }
}

/// The code of `locale`.
pub fn code(locale: Locale) -> &'static str {
    match locale {
        Locale::Uz => "uz",
        Locale::Ru => "ru",
        Locale::En => "en",
    }
}

/// The console's words in `locale`.
pub fn strings(locale: Locale) -> Strings {
    let states = [
        CallState::Ringing,
        CallState::Connected,
        CallState::Ended,
        CallState::Missed,
    ]
    .into_iter()
    .map(|s| (s.as_str(), state_label(locale, s)))
    .collect();
    let statuses = [
        CallStatus::Answered,
        CallStatus::Missed,
        CallStatus::Busy,
        CallStatus::Failed,
    ]
    .into_iter()
    .map(|s| (s.as_str(), status_label(locale, s)))
    .collect();
    // One row per word: (uz, ru, en).
    let w = |uz: &'static str, ru: &'static str, en: &'static str| match locale {
        Locale::Uz => uz,
        Locale::Ru => ru,
        Locale::En => en,
    };
    Strings {
        lang: code(locale),
        app: "pbxbridge",
        skip: w("Asosiy qismga o'tish", "К содержимому", "Skip to content"),
        nav_dashboard: w("Umumiy", "Сводка", "Dashboard"),
        nav_extensions: w("SIP raqamlar", "SIP-номера", "SIP Extensions"),
        nav_live: w("Jonli qo'ng'iroqlar", "Звонки сейчас", "Live calls"),
        nav_history: w("Qo'ng'iroqlar tarixi", "История звонков", "Call history"),
        language: w("Til", "Язык", "Language"),
        switch: w("O'zgartirish", "Сменить", "Switch"),
        logout: w("Chiqish", "Выйти", "Log out"),
        login_title: w("Kirish", "Вход", "Sign in"),
        username: w("Foydalanuvchi", "Пользователь", "Username"),
        password: w("Parol", "Пароль", "Password"),
        sign_in: w("Kirish", "Войти", "Sign in"),
        login_failed: w(
            "Foydalanuvchi yoki parol noto'g'ri",
            "Неверное имя или пароль",
            "Wrong username or password",
        ),
        too_many: w(
            "Juda ko'p urinish, keyinroq qayta urining",
            "Слишком много попыток, попробуйте позже",
            "Too many attempts, try again later",
        ),
        extensions_title: w("SIP raqamlar", "SIP-номера", "SIP Extensions"),
        new_extension: w("+ Yangi raqam", "+ Новый номер", "+ New extension"),
        extension: w("Raqam", "Номер", "Extension"),
        display_name: w("Ko'rinadigan ism", "Отображаемое имя", "Display name"),
        context: w("Kontekst", "Контекст", "Context"),
        transport: w("Transport", "Транспорт", "Transport"),
        codecs: w("Kodeklar", "Кодеки", "Codecs"),
        max_contacts: w("Kontaktlar soni", "Макс. контактов", "Max contacts"),
        enabled: w("Yoqilgan", "Включён", "Enabled"),
        disabled: w("O'chirilgan", "Выключен", "Disabled"),
        provisioning: w("Asteriskka yuklash", "Загрузка в Asterisk", "Provisioning"),
        registration: w("Ro'yxatdan o'tish", "Регистрация", "Registration"),
        actions: w("Amallar", "Действия", "Actions"),
        password_hint: w(
            "Bo'sh qoldirilsa, kuchli parol yaratiladi",
            "Оставьте пустым, и будет создан надёжный пароль",
            "Leave empty to generate a strong password",
        ),
        save: w("Saqlash", "Сохранить", "Save"),
        cancel: w("Bekor qilish", "Отмена", "Cancel"),
        close: w("Yopish", "Закрыть", "Close"),
        edit: w("Tahrirlash", "Изменить", "Edit"),
        enable: w("Yoqish", "Включить", "Enable"),
        disable: w("O'chirib qo'yish", "Выключить", "Disable"),
        delete: w("O'chirib tashlash", "Удалить", "Delete"),
        status: w("Holat", "Состояние", "Status"),
        confirm_delete: w(
            "Bu raqam o'chirib tashlansinmi?",
            "Удалить этот номер?",
            "Delete this extension?",
        ),
        secret_title: w("SIP sozlamalari", "Настройки SIP", "SIP settings"),
        secret_once: w(
            "Parol faqat hozir ko'rsatiladi: nusxa oling",
            "Пароль показан только сейчас: скопируйте его",
            "The password is shown only now: copy it",
        ),
        copy: w("Nusxa olish", "Копировать", "Copy"),
        copied: w("Nusxa olindi", "Скопировано", "Copied"),
        sip_server: w("Server", "Сервер", "Server"),
        sip_port: w("Port", "Порт", "Port"),
        auth_username: w("Auth foydalanuvchi", "Имя для авторизации", "Auth username"),
        online: w("onlayn", "в сети", "online"),
        offline: w("oflayn", "не в сети", "offline"),
        unknown: w("noma'lum", "неизвестно", "unknown"),
        prov_pending: w("kutilmoqda", "ожидает", "pending"),
        prov_applied: w("yuklandi", "загружен", "applied"),
        prov_failed: w("xatolik", "ошибка", "failed"),
        contacts: w("Kontaktlar", "Контакты", "Contacts"),
        user_agent: w("Qurilma", "Устройство", "User agent"),
        rtt: w("RTT, ms", "RTT, мс", "RTT, ms"),
        expires: w("Muddati", "Истекает", "Expires"),
        active_channels: w("Faol kanallar", "Активные каналы", "Active channels"),
        no_contacts: w(
            "Ro'yxatdan o'tmagan",
            "Не зарегистрирован",
            "Not registered",
        ),
        live_title: w("Jonli qo'ng'iroqlar", "Звонки сейчас", "Live calls"),
        live_connected: w("ulangan", "подключено", "connected"),
        live_reconnecting: w("qayta ulanmoqda…", "переподключение…", "reconnecting…"),
        caller: w("Qo'ng'iroq qiluvchi", "Звонящий", "Caller"),
        agent: w("Operator", "Оператор", "Agent"),
        no_calls: w("Qo'ng'iroq yo'q", "Звонков нет", "No calls"),
        history_title: w("Qo'ng'iroqlar tarixi", "История звонков", "Call history"),
        from: w("Dan", "С", "From"),
        to: w("Gacha", "По", "To"),
        direction: w("Yo'nalish", "Направление", "Direction"),
        inbound: w("kiruvchi", "входящий", "inbound"),
        outbound: w("chiquvchi", "исходящий", "outbound"),
        internal: w("ichki", "внутренний", "internal"),
        any: w("hammasi", "все", "any"),
        number: w("Telefon raqam", "Номер телефона", "Number"),
        source: w("Manba", "Источник", "Source"),
        apply: w("Ko'rsatish", "Показать", "Apply"),
        csv: w("CSV yuklab olish", "Скачать CSV", "Download CSV"),
        time: w("Vaqt", "Время", "Time"),
        duration: w("Davomiyligi", "Длительность", "Duration"),
        billsec: w("Suhbat", "Разговор", "Talk"),
        recording: w("Yozuv", "Запись", "Recording"),
        play: w("Tinglash", "Слушать", "Play"),
        prev: w("Oldingi", "Назад", "Previous"),
        next: w("Keyingi", "Далее", "Next"),
        of: w("dan", "из", "of"),
        dashboard_title: w("Bugun", "Сегодня", "Today"),
        today_total: w("Jami qo'ng'iroqlar", "Всего звонков", "Total calls"),
        answer_rate: w("Javob berilgani", "Доля отвеченных", "Answer rate"),
        per_hour: w("Soatlar bo'yicha", "По часам", "Calls per hour"),
        per_extension: w("Raqamlar bo'yicha", "По номерам", "Calls per extension"),
        forbidden: w(
            "Bu amal uchun admin huquqi kerak",
            "Нужны права администратора",
            "This needs the admin role",
        ),
        error: w("Xatolik", "Ошибка", "Error"),
        states,
        statuses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_seeds() {
        let s = strings(Locale::Uz);
        assert_eq!(s.states["ringing"], "kelyapti");
        assert_eq!(s.states["connected"], "suhbatda");
        assert_eq!(s.states["ended"], "yakunlandi");
        assert_eq!(s.statuses["missed"], "javobsiz");
        assert_eq!(s.statuses["answered"], "javob berildi");
        assert_eq!(s.statuses["busy"], "band");
        assert_eq!(s.statuses["failed"], "xatolik");
        for l in [Locale::Uz, Locale::Ru, Locale::En] {
            assert_eq!(parse_locale(code(l)), Some(l));
        }
    }
}
