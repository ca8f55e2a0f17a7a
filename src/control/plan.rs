//! The call-control state machine, without I/O: which ARI requests or AMI actions ([`Op`])
//! each action sends, in order, from what Asterisk reported (the call's channels from `GET /channels`,
//! the endpoint from `GET /endpoints/PJSIP/{ext}`, a `StasisStart` of a channel pbxbridge
//! put into its application). [`super::Control`] runs the plans through the ARI client.
//!
//! Stasis arguments of the channels pbxbridge creates (ARI `appArgs`, comma-separated):
//! - `click-to-call,<number>`: the agent's leg of a click-to-call, once the agent answered.
//!   It is continued to `<number>@CLICK_TO_CALL_CONTEXT` priority 1, so the dialplan's
//!   outbound rules dial the number and bridge the two (the call tracker reads the same
//!   arguments: an outbound call whose `origin` is `click-to-call`).
//! - `pbxbridge-record,<name>,<format>`: a snoop channel (spy both ways) on the customer's
//!   leg; the recording `<name>` is started on it.
//! - `pbxbridge-transfer,<customer>,<agent>`: the target of an attended transfer, once it
//!   answered: a mixing bridge joins it to the customer, who is taken off hold, and the
//!   agent's leg is hung up.
//!
//! ARI can hold, continue or bridge only a channel in our own Stasis application (ARI
//! channel `dialplan.app_name` = `Stasis`, `app_data` = `<app>[,args]`). pbxbridge hands
//! every dialplan channel back at once, so an ordinary call's channels are not: a transfer
//! of such a call is planned as one AMI action on the agent's channel (`BlindTransfer` /
//! `Atxfer`, which work on any channel) when AMI is configured, else refused up front
//! ([`PlanError::NotInStasis`]); hold/unhold of such a call is refused up front (AMI has no
//! hold for an arbitrary channel).

use uuid::Uuid;

use crate::ari::models::{Channel, Endpoint};
use crate::calls::Direction;
use crate::config::{RecordCalls, RecordingFormat};

/// Stasis argument 0 of a click-to-call agent leg (read by the call tracker too).
pub use crate::calls::rules::CLICK_TO_CALL_ARG as CLICK_TO_CALL;
/// Stasis argument 0 of a recording's snoop channel.
pub const RECORD_ARG: &str = "pbxbridge-record";
/// Stasis argument 0 of an attended transfer's target leg.
pub const TRANSFER_ARG: &str = "pbxbridge-transfer";

/// True for the Stasis arguments of channels call control owns (they are not handed back
/// to the dialplan by the default `continue`).
pub fn claims(args: &[String]) -> bool {
    matches!(
        args.first().map(String::as_str),
        Some(CLICK_TO_CALL | RECORD_ARG | TRANSFER_ARG)
    )
}

/// One ARI request (or, for transfers of calls outside our Stasis application, one AMI
/// action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /channels?endpoint&app&appArgs&callerId&timeout&channelId`.
    Originate {
        /// The new channel's id.
        channel_id: String,
        /// e.g. `PJSIP/1001`.
        endpoint: String,
        /// Comma-separated Stasis arguments.
        app_args: String,
        /// Caller id shown to the rung phone (`Name <number>` or a number).
        caller_id: String,
        /// The channel whose call the new one joins (ARI `originator`: same linkedid).
        originator: Option<String>,
    },
    /// `POST /channels/{id}/continue?context&extension&priority=1`.
    Continue {
        /// Channel.
        channel_id: String,
        /// Dialplan context.
        context: String,
        /// Extension.
        extension: String,
    },
    /// `DELETE /channels/{id}?reason=normal`.
    Hangup {
        /// Channel.
        channel_id: String,
    },
    /// `POST /channels/{id}/hold`.
    Hold {
        /// Channel.
        channel_id: String,
    },
    /// `DELETE /channels/{id}/hold`.
    Unhold {
        /// Channel.
        channel_id: String,
    },
    /// `POST /channels/{id}/snoop?spy=both&app&appArgs&snoopId`.
    Snoop {
        /// The channel listened to.
        channel_id: String,
        /// The snoop channel's id.
        snoop_id: String,
        /// Comma-separated Stasis arguments.
        app_args: String,
    },
    /// `POST /channels/{id}/record?name&format&ifExists=append`.
    Record {
        /// Channel (a snoop channel).
        channel_id: String,
        /// Recording name.
        name: String,
        /// `wav` or `gsm`.
        format: String,
    },
    /// `POST /recordings/live/{name}/stop`.
    StopRecording {
        /// Recording name.
        name: String,
    },
    /// `POST /bridges?type=mixing&bridgeId`.
    CreateBridge {
        /// Bridge id.
        bridge_id: String,
    },
    /// `POST /bridges/{id}/addChannel?channel=a,b`.
    AddToBridge {
        /// Bridge id.
        bridge_id: String,
        /// Channels.
        channels: Vec<String>,
    },
    /// AMI `BlindTransfer` (`Channel`, `Context`, `Exten`): every channel bridged to
    /// `channel` (the customer) is redirected to `exten@context`; the agent's leg ends.
    AmiBlindTransfer {
        /// The agent's channel name (e.g. `PJSIP/1001-00000003`), not its id.
        channel: String,
        /// Dialplan context (`CLICK_TO_CALL_CONTEXT`).
        context: String,
        /// Extension or number.
        exten: String,
    },
    /// AMI `Atxfer` (`Channel`, `Exten`, `Context`): the agent's channel starts an attended
    /// transfer (the customer is held while `exten@context` is dialled; when the agent
    /// hangs up, the two are joined).
    AmiAtxfer {
        /// The agent's channel name (the transferer).
        channel: String,
        /// Dialplan context.
        context: String,
        /// Extension or number.
        exten: String,
    },
}

impl Op {
    /// A short name for logs and errors (`hold`, `originate`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Originate { .. } => "originate",
            Op::Continue { .. } => "continue",
            Op::Hangup { .. } => "hangup",
            Op::Hold { .. } => "hold",
            Op::Unhold { .. } => "unhold",
            Op::Snoop { .. } => "snoop",
            Op::Record { .. } => "record",
            Op::StopRecording { .. } => "stop recording",
            Op::CreateBridge { .. } => "create bridge",
            Op::AddToBridge { .. } => "add to bridge",
            Op::AmiBlindTransfer { .. } => "AMI BlindTransfer",
            Op::AmiAtxfer { .. } => "AMI Atxfer",
        }
    }

    /// True when a 404 (the channel is already gone) means the request's purpose is met.
    pub fn gone_is_done(&self) -> bool {
        matches!(self, Op::Hangup { .. })
    }
}

/// Why an action cannot be planned (before any request that changes anything is sent).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The agent's endpoint is known but not registered.
    #[error("extension {extension} is not registered (endpoint state {state})")]
    NotRegistered {
        /// Extension.
        extension: String,
        /// ARI endpoint state (offline, unknown).
        state: String,
    },
    /// Asterisk has no PJSIP endpoint of that name.
    #[error("extension {0} is not a PJSIP endpoint on Asterisk")]
    UnknownEndpoint(String),
    /// The call has no channel left on Asterisk.
    #[error("the call has no live channel on Asterisk (it has ended)")]
    NoChannels,
    /// The action needs the customer's (or caller's) leg and there is none.
    #[error("the call has no customer leg to {0}")]
    NoCustomerLeg(&'static str),
    /// A transfer over AMI needs the agent's leg (the transferer) and there is none.
    #[error("the call has no agent leg to transfer from")]
    NoAgentLeg,
    /// Hold/unhold of a channel that is not in pbxbridge's Stasis application.
    #[error(
        "{0} needs the customer's channel under pbxbridge's Stasis control (ARI), and this call \
         is in the dialplan (Channel not in a Stasis application); use the phone's own hold button"
    )]
    HoldNeedsStasis(&'static str),
    /// A transfer of a call outside our Stasis application, with AMI not configured.
    #[error(
        "transfer of a call that is not in pbxbridge's Stasis application needs AMI: set \
         AMI_USERNAME and AMI_SECRET (Channel not in a Stasis application)"
    )]
    NotInStasis,
}

/// A call's channels on Asterisk, sorted out: the customer's leg (the party that is not an
/// agent; for a call between two agents, the caller's channel) and the agent's leg.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Legs {
    /// The customer's channel id.
    pub customer: Option<String>,
    /// The agent's channel id (another channel than the customer's).
    pub agent: Option<String>,
    /// The agent's channel name (ARI `name`, e.g. `PJSIP/1001-00000003`: what AMI takes).
    pub agent_name: Option<String>,
    /// True when the customer's channel is in our Stasis application (ARI can hold,
    /// continue and bridge it).
    pub customer_in_app: bool,
    /// Every channel of the call (customer first), snoop and Local channels left out.
    pub all: Vec<String>,
}

/// True when the ARI channel is in the Stasis application `app` (`dialplan.app_name` =
/// `Stasis`, first argument of `app_data` = `app`).
pub fn in_app(channel: &Channel, app: &str) -> bool {
    channel
        .dialplan
        .app_name
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case("Stasis"))
        && channel
            .dialplan
            .app_data
            .as_deref()
            .and_then(|d| d.split(',').next())
            .is_some_and(|a| a.trim() == app)
}

/// The channels of the call whose linkedid is `call_id`, from `GET /channels` (channels
/// without a linkedid belong when their own id is `call_id`). `is_agent` tells agent
/// endpoints (`PJSIP/1001` → `1001`); `app` is our Stasis application's name.
pub fn legs(
    call_id: &str,
    channels: &[Channel],
    app: &str,
    is_agent: impl Fn(&str) -> bool,
) -> Legs {
    let mut mine: Vec<&Channel> = channels
        .iter()
        .filter(|c| !c.is_snoop() && !c.is_local())
        .filter(|c| c.linkedid().unwrap_or(c.id.as_str()) == call_id)
        .collect();
    mine.sort_by_key(|c| c.creationtime);
    let customer = mine
        .iter()
        .find(|c| !is_agent(c.endpoint().1))
        .or_else(|| mine.iter().find(|c| c.id == call_id))
        .or(mine.first())
        .map(|c| c.id.clone());
    let agent_chan = mine
        .iter()
        .find(|c| Some(&c.id) != customer.as_ref() && is_agent(c.endpoint().1));
    let agent = agent_chan.map(|c| c.id.clone());
    let agent_name = agent_chan.map(|c| c.name.clone());
    let customer_in_app = mine
        .iter()
        .any(|c| Some(&c.id) == customer.as_ref() && in_app(c, app));
    let mut all: Vec<String> = customer.iter().cloned().collect();
    all.extend(
        mine.iter()
            .filter(|c| Some(&c.id) != customer.as_ref())
            .map(|c| c.id.clone()),
    );
    Legs {
        customer,
        agent,
        agent_name,
        customer_in_app,
        all,
    }
}

/// A click-to-call request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickToCall {
    /// The agent's extension (PJSIP endpoint name).
    pub extension: String,
    /// The number to dial.
    pub number: String,
    /// Caller id shown on the agent's phone; default: the number.
    pub caller_id: Option<String>,
    /// Record once answered.
    pub record: bool,
}

/// A new originated channel id (`pbxbridge-<uuid>`); for a click-to-call it is also the
/// call's linkedid, so the call id is known before Asterisk answers.
pub fn new_channel_id() -> String {
    format!("pbxbridge-{}", Uuid::new_v4().simple())
}

/// Click-to-call, once the endpoint is known: `online` → the originate of the agent's leg
/// into our application (it enters Stasis when the agent answers); any other state →
/// [`PlanError::NotRegistered`].
pub fn originate(
    req: &ClickToCall,
    endpoint: &Endpoint,
    channel_id: &str,
) -> Result<Op, PlanError> {
    let state = endpoint.state.as_deref().unwrap_or("unknown");
    if state != "online" {
        return Err(PlanError::NotRegistered {
            extension: req.extension.clone(),
            state: state.to_string(),
        });
    }
    Ok(Op::Originate {
        channel_id: channel_id.to_string(),
        endpoint: format!("PJSIP/{}", req.extension),
        app_args: format!("{CLICK_TO_CALL},{}", req.number),
        caller_id: req.caller_id.clone().unwrap_or_else(|| req.number.clone()),
        originator: None,
    })
}

/// What to do when a channel call control owns enters Stasis (`args` as in the event).
pub fn on_stasis_start(channel_id: &str, args: &[String], context: &str) -> Vec<Op> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        CLICK_TO_CALL if !arg(1).is_empty() => vec![Op::Continue {
            channel_id: channel_id.to_string(),
            context: context.to_string(),
            extension: arg(1).to_string(),
        }],
        RECORD_ARG if !arg(1).is_empty() => vec![Op::Record {
            channel_id: channel_id.to_string(),
            name: arg(1).to_string(),
            format: if arg(2).is_empty() { "wav" } else { arg(2) }.to_string(),
        }],
        TRANSFER_ARG if !arg(1).is_empty() => {
            let bridge_id = format!("{channel_id}-bridge");
            let mut ops = vec![
                Op::CreateBridge {
                    bridge_id: bridge_id.clone(),
                },
                Op::AddToBridge {
                    bridge_id,
                    channels: vec![arg(1).to_string(), channel_id.to_string()],
                },
                Op::Unhold {
                    channel_id: arg(1).to_string(),
                },
            ];
            if !arg(2).is_empty() {
                ops.push(Op::Hangup {
                    channel_id: arg(2).to_string(),
                });
            }
            ops
        }
        // Malformed: hang the channel up rather than leave it in Stasis.
        _ => vec![Op::Hangup {
            channel_id: channel_id.to_string(),
        }],
    }
}

/// An action on a live call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hang up every channel of the call (the customer's first).
    Hangup,
    /// Put the customer's leg on hold.
    Hold,
    /// Take it off hold.
    Unhold,
    /// Transfer the customer to `to`.
    Transfer {
        /// Extension or number.
        to: String,
        /// Blind or attended.
        mode: TransferMode,
    },
    /// Start recording the call.
    RecordStart,
    /// Stop recording it.
    RecordStop,
}

impl Action {
    /// The action's name in the action log (`hangup`, `transfer`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Hangup => "hangup",
            Action::Hold => "hold",
            Action::Unhold => "unhold",
            Action::Transfer {
                mode: TransferMode::Blind,
                ..
            } => "transfer-blind",
            Action::Transfer {
                mode: TransferMode::Attended,
                ..
            } => "transfer-attended",
            Action::RecordStart => "record-start",
            Action::RecordStop => "record-stop",
        }
    }
}

/// How a transfer is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferMode {
    /// The customer's leg is continued to `to@context`; the agent's leg hung up.
    Blind,
    /// The customer is held while `to` rings; once it answers, both are bridged.
    Attended,
}

/// The recording name of a call (`pbxbridge-<call uuid>`): one recording per call, started
/// again it appends.
pub fn recording_name(call: Uuid) -> String {
    format!("pbxbridge-{}", call.simple())
}

/// The snoop channel id of a call's recording.
pub fn snoop_id(name: &str) -> String {
    format!("{name}-snoop")
}

/// The `recordingPath` of a call recorded as `name` in `format`: `name.format`, the file
/// name in Asterisk's recording directory.
pub fn recording_file(name: &str, format: RecordingFormat) -> String {
    format!("{name}.{}", format.as_str())
}

/// True when `RECORD_CALLS` asks for calls of this direction to be recorded.
pub fn should_record(policy: RecordCalls, direction: Direction) -> bool {
    match policy {
        RecordCalls::None => false,
        RecordCalls::All => true,
        RecordCalls::Inbound => direction == Direction::Inbound,
        RecordCalls::Outbound => direction == Direction::Outbound,
    }
}

/// How a transfer or hold of a call is carried out, decided from the call's [`Legs`]
/// before anything is sent (a transfer is never sent twice to find out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The customer's channel is in our Stasis application: ARI requests.
    Ari,
    /// It is not, and AMI is configured: one AMI action on the agent's channel.
    Ami,
    /// It is not, and AMI is not configured: refused.
    Refused,
}

/// The route of a transfer/hold for these `legs`; `ami` tells whether AMI is configured.
pub fn route(legs: &Legs, ami: bool) -> Route {
    match (legs.customer_in_app, ami) {
        (true, _) => Route::Ari,
        (false, true) => Route::Ami,
        (false, false) => Route::Refused,
    }
}

/// The requests of `action` on a call with these `legs` (from `GET /channels`), in order.
/// `context` is where a blind transfer continues; `target_id` the id for an attended
/// transfer's new leg; `format` the recording format; `call` the call's record id; `ami`
/// whether an AMI connection is configured (used for transfers of calls outside our Stasis
/// application, see [`route`]).
pub fn plan(
    action: &Action,
    legs: &Legs,
    context: &str,
    target_id: &str,
    call: Uuid,
    format: RecordingFormat,
    ami: bool,
) -> Result<Vec<Op>, PlanError> {
    if legs.all.is_empty() && *action != Action::RecordStop {
        return Err(PlanError::NoChannels);
    }
    let customer = |what: &'static str| legs.customer.clone().ok_or(PlanError::NoCustomerLeg(what));
    match action {
        Action::Hold | Action::Unhold => {
            customer(action.name())?;
            if !legs.customer_in_app {
                return Err(PlanError::HoldNeedsStasis(action.name()));
            }
        }
        Action::Transfer { to, mode } => {
            customer("transfer")?;
            match route(legs, ami) {
                Route::Ari => {}
                Route::Refused => return Err(PlanError::NotInStasis),
                Route::Ami => {
                    let channel = legs.agent_name.clone().ok_or(PlanError::NoAgentLeg)?;
                    let (context, exten) = (context.to_string(), to.clone());
                    return Ok(vec![match mode {
                        TransferMode::Blind => Op::AmiBlindTransfer {
                            channel,
                            context,
                            exten,
                        },
                        TransferMode::Attended => Op::AmiAtxfer {
                            channel,
                            context,
                            exten,
                        },
                    }]);
                }
            }
        }
        _ => {}
    }
    Ok(match action {
        Action::Hangup => legs
            .all
            .iter()
            .map(|id| Op::Hangup {
                channel_id: id.clone(),
            })
            .collect(),
        Action::Hold => vec![Op::Hold {
            channel_id: customer("hold")?,
        }],
        Action::Unhold => vec![Op::Unhold {
            channel_id: customer("unhold")?,
        }],
        Action::Transfer {
            to,
            mode: TransferMode::Blind,
        } => {
            let c = customer("transfer")?;
            let mut ops = vec![Op::Continue {
                channel_id: c,
                context: context.to_string(),
                extension: to.clone(),
            }];
            if let Some(a) = &legs.agent {
                ops.push(Op::Hangup {
                    channel_id: a.clone(),
                });
            }
            ops
        }
        Action::Transfer {
            to,
            mode: TransferMode::Attended,
        } => {
            let c = customer("transfer")?;
            vec![
                Op::Hold {
                    channel_id: c.clone(),
                },
                Op::Originate {
                    channel_id: target_id.to_string(),
                    endpoint: format!("PJSIP/{to}"),
                    app_args: format!("{TRANSFER_ARG},{c},{}", legs.agent.as_deref().unwrap_or("")),
                    caller_id: String::new(),
                    originator: Some(c.clone()),
                },
            ]
        }
        Action::RecordStart => {
            let name = recording_name(call);
            vec![Op::Snoop {
                channel_id: customer("record")?,
                snoop_id: snoop_id(&name),
                app_args: format!("{RECORD_ARG},{name},{}", format.as_str()),
            }]
        }
        Action::RecordStop => {
            let name = recording_name(call);
            vec![
                Op::StopRecording { name: name.clone() },
                Op::Hangup {
                    channel_id: snoop_id(&name),
                },
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(id: &str, name: &str, linkedid: &str, created: u32) -> Channel {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "state": "Up",
            "creationtime": format!("2026-11-21T16:54:{created:02}.000+0000"),
            "channelvars": {"CHANNEL(linkedid)": linkedid},
        }))
        .unwrap()
    }

    fn agent(res: &str) -> bool {
        res.len() == 4 && res.chars().all(|c| c.is_ascii_digit())
    }

    fn call() -> Uuid {
        Uuid::from_u128(7)
    }

    #[test]
    fn legs_sort_customer_and_agent() {
        let chans = vec![
            chan("a.2", "PJSIP/1001-00000002", "a.1", 2),
            chan("a.1", "PJSIP/pstn-00000001", "a.1", 1),
            chan("b.1", "PJSIP/1002-00000003", "b.1", 3),
            chan("s.1", "Snoop/a.1-00000001", "s.1", 4),
        ];
        let l = legs("a.1", &chans, "callcenter", agent);
        assert_eq!(l.customer.as_deref(), Some("a.1"));
        assert_eq!(l.agent.as_deref(), Some("a.2"));
        assert_eq!(l.all, vec!["a.1", "a.2"]);
    }

    #[test]
    fn click_to_call_customer_is_the_dialled_leg() {
        // The originated agent leg is the origin (its id is the linkedid); the customer is
        // the trunk leg created later.
        let chans = vec![
            chan("pbxbridge-x", "PJSIP/1001-00000010", "pbxbridge-x", 1),
            chan("c.9", "PJSIP/pstn-00000011", "pbxbridge-x", 5),
        ];
        let l = legs("pbxbridge-x", &chans, "callcenter", agent);
        assert_eq!(l.customer.as_deref(), Some("c.9"));
        assert_eq!(l.agent.as_deref(), Some("pbxbridge-x"));
    }

    #[test]
    fn internal_call_customer_is_the_caller() {
        let chans = vec![
            chan("i.2", "PJSIP/1002-00000002", "i.1", 2),
            chan("i.1", "PJSIP/1001-00000001", "i.1", 1),
        ];
        let l = legs("i.1", &chans, "callcenter", agent);
        assert_eq!(l.customer.as_deref(), Some("i.1"));
        assert_eq!(l.agent.as_deref(), Some("i.2"));
    }

    fn endpoint(state: &str) -> Endpoint {
        Endpoint {
            technology: "PJSIP".into(),
            resource: "1001".into(),
            state: Some(state.into()),
            channel_ids: vec![],
        }
    }

    fn c2c() -> ClickToCall {
        ClickToCall {
            extension: "1001".into(),
            number: "998907778899".into(),
            caller_id: None,
            record: false,
        }
    }

    #[test]
    fn originate_needs_an_online_endpoint() {
        let op = originate(&c2c(), &endpoint("online"), "pbxbridge-1").unwrap();
        assert_eq!(
            op,
            Op::Originate {
                channel_id: "pbxbridge-1".into(),
                endpoint: "PJSIP/1001".into(),
                app_args: "click-to-call,998907778899".into(),
                caller_id: "998907778899".into(),
                originator: None,
            }
        );
        assert_eq!(
            originate(&c2c(), &endpoint("offline"), "x"),
            Err(PlanError::NotRegistered {
                extension: "1001".into(),
                state: "offline".into()
            })
        );
    }

    #[test]
    fn agent_answer_continues_to_the_number() {
        let args = vec!["click-to-call".to_string(), "998907778899".to_string()];
        assert!(claims(&args));
        assert_eq!(
            on_stasis_start("pbxbridge-1", &args, "from-internal"),
            vec![Op::Continue {
                channel_id: "pbxbridge-1".into(),
                context: "from-internal".into(),
                extension: "998907778899".into()
            }]
        );
        assert!(!claims(&["inbound".to_string(), "712345001".to_string()]));
        // Malformed arguments: hung up, never left in Stasis.
        assert_eq!(
            on_stasis_start("z", &["click-to-call".to_string()], "c"),
            vec![Op::Hangup {
                channel_id: "z".into()
            }]
        );
    }

    fn two_legs() -> Legs {
        Legs {
            customer: Some("c".into()),
            agent: Some("a".into()),
            agent_name: Some("PJSIP/1001-00000002".into()),
            customer_in_app: true,
            all: vec!["c".into(), "a".into()],
        }
    }

    fn p(action: Action) -> Result<Vec<Op>, PlanError> {
        plan(
            &action,
            &two_legs(),
            "from-internal",
            "t",
            call(),
            RecordingFormat::Wav,
            false,
        )
    }

    #[test]
    fn plans_in_order() {
        let h = |id: &str| Op::Hangup {
            channel_id: id.into(),
        };
        assert_eq!(p(Action::Hangup).unwrap(), vec![h("c"), h("a")]);
        assert_eq!(
            p(Action::Hold).unwrap(),
            vec![Op::Hold {
                channel_id: "c".into()
            }]
        );
        assert_eq!(
            p(Action::Unhold).unwrap(),
            vec![Op::Unhold {
                channel_id: "c".into()
            }]
        );
        assert_eq!(
            p(Action::Transfer {
                to: "1002".into(),
                mode: TransferMode::Blind
            })
            .unwrap(),
            vec![
                Op::Continue {
                    channel_id: "c".into(),
                    context: "from-internal".into(),
                    extension: "1002".into()
                },
                h("a")
            ]
        );
        let attended = p(Action::Transfer {
            to: "1002".into(),
            mode: TransferMode::Attended,
        })
        .unwrap();
        assert_eq!(
            attended[0],
            Op::Hold {
                channel_id: "c".into()
            }
        );
        assert!(
            matches!(&attended[1], Op::Originate { endpoint, app_args, originator, .. }
            if endpoint == "PJSIP/1002" && app_args == "pbxbridge-transfer,c,a"
                && originator.as_deref() == Some("c"))
        );
        // The target answered: bridge, unhold, release the agent.
        let args: Vec<String> = "pbxbridge-transfer,c,a"
            .split(',')
            .map(String::from)
            .collect();
        assert_eq!(
            on_stasis_start("t", &args, "x"),
            vec![
                Op::CreateBridge {
                    bridge_id: "t-bridge".into()
                },
                Op::AddToBridge {
                    bridge_id: "t-bridge".into(),
                    channels: vec!["c".into(), "t".into()]
                },
                Op::Unhold {
                    channel_id: "c".into()
                },
                h("a"),
            ]
        );
    }

    #[test]
    fn recording_snoops_the_customer_then_records_the_snoop() {
        let name = recording_name(call());
        let ops = p(Action::RecordStart).unwrap();
        assert_eq!(
            ops,
            vec![Op::Snoop {
                channel_id: "c".into(),
                snoop_id: format!("{name}-snoop"),
                app_args: format!("pbxbridge-record,{name},wav"),
            }]
        );
        let args: Vec<String> = format!("pbxbridge-record,{name},wav")
            .split(',')
            .map(String::from)
            .collect();
        assert_eq!(
            on_stasis_start("snoop", &args, "x"),
            vec![Op::Record {
                channel_id: "snoop".into(),
                name: name.clone(),
                format: "wav".into()
            }]
        );
        assert_eq!(
            p(Action::RecordStop).unwrap(),
            vec![
                Op::StopRecording { name: name.clone() },
                Op::Hangup {
                    channel_id: format!("{name}-snoop")
                }
            ]
        );
        assert_eq!(
            recording_file(&name, RecordingFormat::Gsm),
            format!("{name}.gsm")
        );
    }

    #[test]
    fn no_channels_or_no_customer_are_errors() {
        let none = Legs::default();
        assert_eq!(
            plan(
                &Action::Hold,
                &none,
                "c",
                "t",
                call(),
                RecordingFormat::Wav,
                true
            ),
            Err(PlanError::NoChannels)
        );
        let only_agent = Legs {
            customer: None,
            agent: Some("a".into()),
            all: vec!["a".into()],
            ..Legs::default()
        };
        assert_eq!(
            plan(
                &Action::Hold,
                &only_agent,
                "c",
                "t",
                call(),
                RecordingFormat::Wav,
                true
            ),
            Err(PlanError::NoCustomerLeg("hold"))
        );
    }

    fn in_stasis(mut c: Channel, app_data: &str) -> Channel {
        c.dialplan.app_name = Some("Stasis".into());
        c.dialplan.app_data = Some(app_data.into());
        c
    }

    #[test]
    fn legs_know_which_channels_are_in_our_application() {
        let dialplan = vec![
            chan("a.1", "PJSIP/pstn-00000001", "a.1", 1),
            chan("a.2", "PJSIP/1001-00000002", "a.1", 2),
        ];
        let l = legs("a.1", &dialplan, "callcenter", agent);
        assert!(!l.customer_in_app);
        assert_eq!(l.agent_name.as_deref(), Some("PJSIP/1001-00000002"));
        let mut ours = dialplan.clone();
        ours[0] = in_stasis(ours[0].clone(), "callcenter,inbound,712345001");
        assert!(legs("a.1", &ours, "callcenter", agent).customer_in_app);
        // Another application's Stasis is not ours.
        let mut other = dialplan.clone();
        other[0] = in_stasis(other[0].clone(), "callcenterx,inbound");
        assert!(!legs("a.1", &other, "callcenter", agent).customer_in_app);
    }

    fn dialplan_legs() -> Legs {
        Legs {
            customer_in_app: false,
            ..two_legs()
        }
    }

    fn plan_on(action: Action, legs: &Legs, ami: bool) -> Result<Vec<Op>, PlanError> {
        plan(
            &action,
            legs,
            "from-internal",
            "t",
            call(),
            RecordingFormat::Wav,
            ami,
        )
    }

    fn transfer(mode: TransferMode) -> Action {
        Action::Transfer {
            to: "1002".into(),
            mode,
        }
    }

    #[test]
    fn transfer_route_is_decided_up_front() {
        assert_eq!(route(&two_legs(), false), Route::Ari);
        assert_eq!(route(&two_legs(), true), Route::Ari);
        assert_eq!(route(&dialplan_legs(), true), Route::Ami);
        assert_eq!(route(&dialplan_legs(), false), Route::Refused);
        // In our application: the ARI plan, even with AMI configured.
        assert!(matches!(
            plan_on(transfer(TransferMode::Blind), &two_legs(), true).unwrap()[0],
            Op::Continue { .. }
        ));
        // Not in it: one AMI action on the agent's channel (by name), nothing over ARI.
        assert_eq!(
            plan_on(transfer(TransferMode::Blind), &dialplan_legs(), true).unwrap(),
            vec![Op::AmiBlindTransfer {
                channel: "PJSIP/1001-00000002".into(),
                context: "from-internal".into(),
                exten: "1002".into(),
            }]
        );
        assert_eq!(
            plan_on(transfer(TransferMode::Attended), &dialplan_legs(), true).unwrap(),
            vec![Op::AmiAtxfer {
                channel: "PJSIP/1001-00000002".into(),
                context: "from-internal".into(),
                exten: "1002".into(),
            }]
        );
        // No AMI: refused before anything is sent, naming AMI_USERNAME.
        let e = plan_on(transfer(TransferMode::Blind), &dialplan_legs(), false).unwrap_err();
        assert_eq!(e, PlanError::NotInStasis);
        assert!(e.to_string().contains("AMI_USERNAME"));
        // AMI transfers need the agent's leg.
        let no_agent = Legs {
            agent: None,
            agent_name: None,
            all: vec!["c".into()],
            ..dialplan_legs()
        };
        assert_eq!(
            plan_on(transfer(TransferMode::Attended), &no_agent, true),
            Err(PlanError::NoAgentLeg)
        );
    }

    #[test]
    fn hold_outside_our_application_is_refused_clearly() {
        for (action, ami) in [(Action::Hold, true), (Action::Unhold, false)] {
            let e = plan_on(action, &dialplan_legs(), ami).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("Stasis control"), "{msg}");
            assert!(msg.contains("hold button"), "{msg}");
        }
    }

    #[test]
    fn record_policy() {
        use Direction::*;
        assert!(!should_record(RecordCalls::None, Inbound));
        assert!(should_record(RecordCalls::All, Internal));
        assert!(should_record(RecordCalls::Inbound, Inbound));
        assert!(!should_record(RecordCalls::Inbound, Outbound));
        assert!(should_record(RecordCalls::Outbound, Outbound));
    }
}
