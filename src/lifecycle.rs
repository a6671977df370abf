//! The order lifecycle as one table: every state an order can be in, what
//! each means (open or final, who has the package, how a person would say
//! it), and which report moves an order from one state to the next.
//!
//! Everything else derives from here: the desk moves orders only through
//! [`next`], the API's counts and `?state=` parser, the metrics' labels and
//! the dashboard's columns iterate [`OrderState::ALL`], and storage asks
//! [`OrderState::is_final`] instead of naming a state. A new state is a
//! variant, a row in [`ROWS`], its transitions in [`TRANSITIONS`], and the
//! desk's arm that acts on it (see "A new order state" in
//! `docs/ARCHITECTURE.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderState {
    /// Waiting for a driver.
    Ready,
    /// Offered to one driver, who has not picked it up yet.
    Assigned,
    /// Picked up by its driver.
    InTransit,
    /// Delivered; final.
    Delivered,
}

/// Who has the package while its order is in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: it waits at the shop, or its order is over.
    Nobody,
    /// A driver it was offered to, who has not picked it up.
    Offered,
    /// The driver carrying it.
    Carrying,
}

impl Holder {
    /// Who it is, in words.
    pub const fn words(self) -> &'static str {
        match self {
            Holder::Nobody => "nobody",
            Holder::Offered => "the driver it is offered to",
            Holder::Carrying => "its driver",
        }
    }
}

/// One state's row of the table.
#[derive(Debug, Clone, Copy)]
pub struct StateRow {
    /// The state.
    pub state: OrderState,
    /// Its name on the wire and in storage.
    pub name: &'static str,
    /// Whether the order is over: nothing moves it on again.
    pub is_final: bool,
    /// Who has the package meanwhile.
    pub holder: Holder,
    /// How a person would say it.
    pub words: &'static str,
}

/// The states, one row each, in lifecycle order (the order of
/// [`OrderState`]'s variants).
pub const ROWS: [StateRow; 4] = [
    StateRow {
        state: OrderState::Ready,
        name: "ready",
        is_final: false,
        holder: Holder::Nobody,
        words: "Ready",
    },
    StateRow {
        state: OrderState::Assigned,
        name: "assigned",
        is_final: false,
        holder: Holder::Offered,
        words: "Assigned",
    },
    StateRow {
        state: OrderState::InTransit,
        name: "in-transit",
        is_final: false,
        holder: Holder::Carrying,
        words: "In transit",
    },
    StateRow {
        state: OrderState::Delivered,
        name: "delivered",
        is_final: true,
        holder: Holder::Nobody,
        words: "Delivered",
    },
];

impl OrderState {
    /// How many states there are.
    pub const COUNT: usize = ROWS.len();

    /// Every state, in lifecycle order.
    pub const ALL: [OrderState; OrderState::COUNT] = {
        let mut all = [OrderState::Ready; OrderState::COUNT];
        let mut index = 0;
        while index < OrderState::COUNT {
            all[index] = ROWS[index].state;
            index += 1;
        }
        all
    };

    /// Its row of the table.
    pub const fn row(self) -> &'static StateRow {
        &ROWS[self as usize]
    }

    /// The state's name, as the API and storage spell it.
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// Whether the order is over.
    pub const fn is_final(self) -> bool {
        self.row().is_final
    }

    /// Whether the order is still under way.
    pub const fn is_open(self) -> bool {
        !self.is_final()
    }

    /// Who has the package.
    pub const fn holder(self) -> Holder {
        self.row().holder
    }

    /// How a person would say it.
    pub const fn words(self) -> &'static str {
        self.row().words
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<OrderState> {
        ROWS.iter()
            .find(|row| row.name == name)
            .map(|row| row.state)
    }

    /// Every state's name, for messages: "a, b, c or d".
    pub fn names() -> String {
        let names: Vec<&str> = ROWS.iter().map(|row| row.name).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What moves an order on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The desk offers it to a driver.
    Offer,
    /// Its offer or its package goes back to the desk: the offer expired,
    /// the driver went away, an operator reclaimed it.
    Withdraw,
    /// Its driver picked it up (`in-transit`).
    PickUp,
    /// Its driver delivered it (`delivered`).
    Deliver,
}

impl Report {
    /// How the docs name it: an event in backticks, or what the desk does.
    pub const fn label(self) -> &'static str {
        match self {
            Report::Offer => "offer",
            Report::Withdraw => "withdrawal",
            Report::PickUp => "`in-transit`",
            Report::Deliver => "`delivered`",
        }
    }
}

/// The state a new order (`pickup`) starts in.
pub const INITIAL: OrderState = OrderState::Ready;

/// Every move: from a state, on a report, to a state.
pub const TRANSITIONS: &[(OrderState, Report, OrderState)] = &[
    (OrderState::Ready, Report::Offer, OrderState::Assigned),
    (OrderState::Assigned, Report::Withdraw, OrderState::Ready),
    (OrderState::InTransit, Report::Withdraw, OrderState::Ready),
    (OrderState::Assigned, Report::PickUp, OrderState::InTransit),
    (
        OrderState::InTransit,
        Report::Deliver,
        OrderState::Delivered,
    ),
];

/// Reports that find their order already past them: a repeat (a driver
/// re-announcing after a reconnect, say), which changes nothing.
const REPEATS: &[(OrderState, Report)] = &[
    (OrderState::InTransit, Report::PickUp),
    (OrderState::Delivered, Report::PickUp),
    (OrderState::Delivered, Report::Deliver),
];

/// Reports that come before the step they need: refused as out of order.
const TOO_EARLY: &[(OrderState, Report)] = &[(OrderState::Assigned, Report::Deliver)];

/// Where a report takes an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Into this state.
    Enter(OrderState),
    /// Nowhere: a repeat of what already happened.
    Unchanged,
    /// It does not apply here.
    Refused(Misstep),
}

/// Why a report does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misstep {
    /// The reporter does not hold the package in a way the report needs.
    NotHeld,
    /// A step is missing before it (delivered before picked up).
    TooEarly,
}

/// Where `report` takes an order in `state`: the one rule every change of
/// state goes through.
pub fn next(state: OrderState, report: Report) -> Next {
    if let Some((_, _, to)) = TRANSITIONS
        .iter()
        .find(|(from, by, _)| *from == state && *by == report)
    {
        Next::Enter(*to)
    } else if REPEATS.contains(&(state, report)) {
        Next::Unchanged
    } else if TOO_EARLY.contains(&(state, report)) {
        Next::Refused(Misstep::TooEarly)
    } else {
        Next::Refused(Misstep::NotHeld)
    }
}

/// The table as Markdown, as the README shows it (a test keeps the two
/// the same).
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| state | open or final | who has the package | entered on |\n|---|---|---|---|\n",
    );
    for row in ROWS {
        let mut entered: Vec<&str> = Vec::new();
        if row.state == INITIAL {
            entered.push("`pickup`");
        }
        for (_, report, _) in TRANSITIONS.iter().filter(|(_, _, to)| *to == row.state) {
            if !entered.contains(&report.label()) {
                entered.push(report.label());
            }
        }
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.name,
            if row.is_final { "final" } else { "open" },
            row.holder.words(),
            entered.join(", ")
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_are_in_the_order_of_the_variants() {
        for (index, row) in ROWS.iter().enumerate() {
            assert_eq!(row.state as usize, index, "{}", row.name);
            assert_eq!(OrderState::parse(row.name), Some(row.state));
            let wire = serde_json::to_string(&row.state).unwrap();
            assert_eq!(
                wire,
                format!("\"{}\"", row.name),
                "serde spells it as the table"
            );
        }
    }

    #[test]
    fn a_final_state_is_left_by_no_transition_and_nobody_holds_its_package() {
        for state in OrderState::ALL.into_iter().filter(|state| state.is_final()) {
            assert!(
                TRANSITIONS.iter().all(|(from, ..)| *from != state),
                "{state} is final but is left"
            );
            assert_eq!(state.holder(), Holder::Nobody);
        }
    }

    #[test]
    fn every_state_is_reached_from_ready() {
        let mut reached = vec![OrderState::Ready];
        while let Some(more) = TRANSITIONS
            .iter()
            .find(|(from, _, to)| reached.contains(from) && !reached.contains(to))
        {
            reached.push(more.2);
        }
        for state in OrderState::ALL {
            assert!(reached.contains(&state), "{state} cannot be reached");
        }
    }

    #[test]
    fn the_happy_path_and_its_repeats() {
        use OrderState::*;
        let cases = [
            (Ready, Report::Offer, Next::Enter(Assigned)),
            (Assigned, Report::PickUp, Next::Enter(InTransit)),
            (InTransit, Report::Deliver, Next::Enter(Delivered)),
            (Assigned, Report::Withdraw, Next::Enter(Ready)),
            (Delivered, Report::PickUp, Next::Unchanged),
            (Delivered, Report::Deliver, Next::Unchanged),
            (Assigned, Report::Deliver, Next::Refused(Misstep::TooEarly)),
            (Ready, Report::PickUp, Next::Refused(Misstep::NotHeld)),
            (Delivered, Report::Withdraw, Next::Refused(Misstep::NotHeld)),
        ];
        for (state, report, expected) in cases {
            assert_eq!(next(state, report), expected, "{state} on {report:?}");
        }
    }

    #[test]
    fn names_read_as_a_list() {
        assert_eq!(
            OrderState::names(),
            "ready, assigned, in-transit or delivered"
        );
    }
}
