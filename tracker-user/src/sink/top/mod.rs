//! `tracker top`: a live, full-screen table of every listener, redrawn at each report.
//!
//! [`TopView`] is a [`ReportSink`] that owns the terminal (raw mode, alternate screen) for as
//! long as it lives; [`quit_requested`] resolves when the user asks to leave. Drawing is a pure
//! function of the last report (`draw`), so the layout is tested against ratatui's
//! `TestBackend` without a terminal.

use std::cmp::Reverse;
use std::io::{self, IsTerminal as _, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};

use anyhow::{Context as _, ensure};
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use futures_util::StreamExt as _;
use ratatui::Frame;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use crate::kernel::hooks::Capability;
use crate::observer::ListenerReport;
use crate::sink::{Flow, IntervalTotals, ReportBatch, ReportSink};

/// Appended to a PEAK figure when the listener is at that peak right now.
const AT_PEAK: &str = "▲";

/// Column headings, in display order. The first three are text, the rest numbers.
const HEADINGS: [&str; 12] = [
    "LISTENER", "PROCESS", "OWNER", "CURR", "PEAK", "SESS", "BUSY", "CONN-S", "BUSY-S", "OPENED",
    "CLOSED", "ERRS",
];
/// Index of the PEAK column in [`HEADINGS`].
const PEAK_COLUMN: usize = 4;
/// Columns before this index are left-aligned text; from it on, right-aligned numbers.
const FIRST_NUMBER_COLUMN: usize = 3;
/// The OWNER cell's most characters: a pod's namespace and name can be long, and the figures
/// matter more.
const OWNER_WIDTH: usize = 32;

/// Whether the terminal is in raw mode / on the alternate screen because of us. Shared with the
/// panic hook, which must put the terminal back before the panic message is printed (on the
/// alternate screen it would vanish when the screen is left) and must not take any lock to do
/// so: the panicking thread may hold one.
static ENGAGED: AtomicBool = AtomicBool::new(false);

/// The screen of the live [`TopView`], if any, so that [`quit_requested`] (which has no access
/// to the view: the daemon owns it as its sink) can redraw the last report on a resize without
/// waiting for the next one. Weak: the view alone decides when the screen goes away.
static ACTIVE: Mutex<Weak<Mutex<Screen>>> = Mutex::new(Weak::new());

/// The live view: owns the terminal (raw mode + alternate screen) until dropped.
pub struct TopView {
    screen: Arc<Mutex<Screen>>,
}

/// The terminal and what it shows.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// The last report, kept to redraw it on a resize; `None` until the first one.
    batch: Option<BatchView>,
}

impl Screen {
    fn redraw(&mut self) -> io::Result<()> {
        self.terminal.draw(|frame| match &self.batch {
            Some(batch) => draw(frame, batch),
            None => draw_waiting(frame),
        })?;
        Ok(())
    }
}

impl TopView {
    /// Enters raw mode and the alternate screen, hides the cursor, draws an empty "waiting for
    /// the first report" screen. Fails with a clear error if stdout is not a terminal.
    pub fn enter() -> anyhow::Result<Self> {
        ensure!(
            io::stdout().is_terminal(),
            "tracker top needs a terminal, and stdout is not one \
             (to pipe or log reports, run tracker without `top`)"
        );
        install_panic_hook();
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        ENGAGED.store(true, Ordering::SeqCst);
        // No view exists yet to restore the terminal on drop: undo by hand on failure.
        Self::take_over_screen().inspect_err(|_| restore_terminal())
    }

    fn take_over_screen() -> anyhow::Result<Self> {
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
            .context("switching to the terminal's alternate screen")?;
        let terminal =
            Terminal::new(CrosstermBackend::new(io::stdout())).context("measuring the terminal")?;
        let mut screen = Screen {
            terminal,
            batch: None,
        };
        screen.redraw().context("drawing the live view")?;
        let screen = Arc::new(Mutex::new(screen));
        *lock(&ACTIVE) = Arc::downgrade(&screen);
        Ok(Self { screen })
    }
}

impl Drop for TopView {
    fn drop(&mut self) {
        // Stop resize redraws first: they would draw over the restored terminal.
        *lock(&ACTIVE) = Weak::new();
        restore_terminal();
    }
}

impl ReportSink for TopView {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        let mut screen = lock(&self.screen);
        screen.batch = Some(BatchView::from(batch));
        screen.redraw().context("drawing the live view")?;
        Ok(Flow::Continue)
    }
}

/// Resolves when the user presses `q`, `Q`, Esc or Ctrl-C in the terminal (raw mode turns
/// Ctrl-C into a key event, not SIGINT). Redraws the last report when the terminal is resized.
///
/// Also resolves if the terminal can no longer be read (it hung up): nobody can see the view or
/// press `q` any more, so stopping cleanly beats running on unseen.
pub async fn quit_requested() {
    let mut events = EventStream::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Key(key)) if is_quit_key(key) => return,
            Ok(Event::Resize(..)) => redraw_active(),
            Ok(_) => {}
            Err(error) => {
                log::warn!("reading the terminal: {error}; leaving the live view");
                return;
            }
        }
    }
}

fn is_quit_key(key: KeyEvent) -> bool {
    // Releases are only reported by terminals with the kitty protocol enabled (we do not enable
    // it), but a release of `q` must not count as a second press regardless.
    if key.kind == KeyEventKind::Release {
        return false;
    }
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        KeyCode::Char('c' | 'C') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

/// Redraws the live view's last report, if a view is live (after a resize).
fn redraw_active() {
    let Some(screen) = lock(&ACTIVE).upgrade() else {
        return;
    };
    // The next report redraws anyway; a failed resize redraw is not worth stopping for.
    if let Err(error) = lock(&screen).redraw() {
        log::debug!("redrawing after a resize: {error}");
    }
}

/// Locks `mutex` even if a panic poisoned it: the screen is repainted whole on each draw, so a
/// draw interrupted half-way leaves nothing inconsistent behind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Leaves the alternate screen, shows the cursor and leaves raw mode, once, however many of
/// the view's drop, `enter`'s error path and the panic hook ask for it.
fn restore_terminal() {
    if !ENGAGED.swap(false, Ordering::SeqCst) {
        return;
    }
    // Step by step and ignoring failures: one step failing must not keep the others from
    // running, and there is nowhere better to report a failure than the terminal being fixed.
    let mut stdout = io::stdout();
    let _ = execute!(stdout, LeaveAlternateScreen);
    let _ = execute!(stdout, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// What the view shows of one report: an owned copy (the sink only borrows the batch), with the
/// listeners already in display order.
#[derive(Debug, Clone)]
struct BatchView {
    reports: Vec<ListenerReport>,
    totals: IntervalTotals,
    per_interval: bool,
}

impl From<&ReportBatch<'_>> for BatchView {
    fn from(batch: &ReportBatch<'_>) -> Self {
        let mut reports = batch.reports.to_vec();
        // Busiest first: the listeners a reader looks for float to the top. The address breaks
        // ties, which orders names numerically (port 9 before port 10) and keeps rows still
        // between reports when nothing changes.
        reports.sort_by_key(|report| {
            (
                Reverse(report.snapshot.curr),
                Reverse(report.snapshot.peak),
                report.id,
            )
        });
        Self {
            reports,
            totals: batch.totals,
            per_interval: batch.per_interval,
        }
    }
}

fn title_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn warning_style() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

/// The screen before the first report arrives (the first interval may be long).
fn draw_waiting(frame: &mut Frame) {
    let title = Line::styled(
        "tracker top — waiting for the first report — q quits",
        title_style(),
    );
    frame.render_widget(Paragraph::new(title), frame.area());
}

/// Draws one report: a title, warnings about miscounts if any, and the table of listeners.
fn draw(frame: &mut Frame, batch: &BatchView) {
    let warnings = warning_lines(&batch.totals);
    let [title_area, warnings_area, _gap, table_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::try_from(warnings.len()).unwrap_or(u16::MAX)),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::styled(title(batch), title_style())),
        title_area,
    );
    frame.render_widget(Paragraph::new(warnings), warnings_area);
    draw_table(frame, table_area, &batch.reports);
}

fn title(batch: &BatchView) -> String {
    let count = batch.reports.len();
    let noun = if count == 1 { "listener" } else { "listeners" };
    // Without resets, peaks and counts run from start; the reader must know which they see.
    let scope = if batch.per_interval {
        ""
    } else {
        ", totals since start"
    };
    format!(
        "tracker top — {count} {noun} — interval {:.1}s{scope} — q quits",
        batch.totals.interval_s
    )
}

fn warning_lines(totals: &IntervalTotals) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if !totals.hooks.has(Capability::Turns) {
        lines.push(Line::styled(
            "⚠ busy time and sessions unavailable: this kernel has no hook for turns",
            warning_style(),
        ));
    }
    if totals.lost_events > 0 {
        let n = totals.lost_events;
        let noun = if n == 1 { "event" } else { "events" };
        lines.push(Line::styled(
            format!("⚠ {n} kernel {noun} lost in the last interval: counts may be off"),
            warning_style(),
        ));
    }
    if totals.untracked_connections > 0 {
        let n = totals.untracked_connections;
        let noun = if n == 1 { "connection" } else { "connections" };
        lines.push(Line::styled(
            format!(
                "⚠ {n} {noun} not tracked in the last interval (kernel table full): \
                 counts may be off"
            ),
            warning_style(),
        ));
    }
    lines
}

/// One table row as text, plus whether the listener is at its peak now.
struct RowText {
    cells: [String; HEADINGS.len()],
    /// The PROCESS cell in two parts, to cut it without cutting the pid: the first owner's
    /// name, then `/pid` and the count of further owners.
    process: (String, String),
    at_peak: bool,
    gone: bool,
}

fn row_text(report: &ListenerReport) -> RowText {
    let snapshot = &report.snapshot;
    let at_peak = snapshot.curr > 0 && snapshot.curr == snapshot.peak;
    let mut listener = report.name();
    if report.gone {
        listener.push_str(" (gone)");
    }
    let process = match report.owners.split_first() {
        None => ("-".to_owned(), String::new()),
        Some((first, [])) => (first.comm.clone(), format!("/{}", first.pid)),
        Some((first, rest)) => (
            first.comm.clone(),
            format!("/{} +{}", first.pid, rest.len()),
        ),
    };
    // A space where the marker would be keeps the digits of every row in line.
    let peak = format!("{}{}", snapshot.peak, if at_peak { AT_PEAK } else { " " });
    RowText {
        cells: [
            listener,
            format!("{}{}", process.0, process.1),
            owner_cell(report),
            snapshot.curr.to_string(),
            peak,
            snapshot.peak_sessions.to_string(),
            snapshot.busy.to_string(),
            format!("{:.1}", snapshot.conn_for_secs()),
            format!("{:.1}", snapshot.active_for_secs()),
            snapshot.opened.to_string(),
            snapshot.closed.to_string(),
            snapshot.errors.total().to_string(),
        ],
        process,
        at_peak,
        gone: report.gone,
    }
}

/// Who runs the listener (its pod, container or systemd unit), cut to [`OWNER_WIDTH`]; `-`
/// where its cgroup names none.
fn owner_cell(report: &ListenerReport) -> String {
    let Some(name) = report.workload.short_name() else {
        return "-".to_owned();
    };
    if name.chars().count() <= OWNER_WIDTH {
        return name;
    }
    let kept: String = name.chars().take(OWNER_WIDTH - 1).collect();
    format!("{kept}…")
}

fn aligned(column: usize, text: String) -> Line<'static> {
    let line = Line::from(text);
    if column >= FIRST_NUMBER_COLUMN {
        line.right_aligned()
    } else {
        line
    }
}

/// Index of the PROCESS column in [`HEADINGS`].
const PROCESS_COLUMN: usize = 1;

/// Column widths and the spacing between columns for a table `available` cells wide.
///
/// Each column is as wide as its widest cell, so numbers stay narrow and names are never cut
/// while the terminal is wide enough. When it is not, room is taken first from the process
/// names (they only help to recognise a listener), then from the gaps between columns; only
/// then does ratatui cut columns, the listener's name being the last one a reader should lose.
fn column_widths(rows: &[RowText], available: u16) -> ([u16; HEADINGS.len()], u16) {
    let mut widths: [u16; HEADINGS.len()] = std::array::from_fn(|column| {
        let widest = rows
            .iter()
            .map(|row| Line::from(row.cells[column].as_str()).width())
            .chain([HEADINGS[column].len()])
            .max()
            .unwrap_or(0);
        u16::try_from(widest).unwrap_or(u16::MAX)
    });
    let gaps = u16::try_from(HEADINGS.len() - 1).unwrap_or(u16::MAX);
    let needed = |widths: &[u16], spacing: u16| {
        widths.iter().fold(spacing.saturating_mul(gaps), |sum, &w| {
            sum.saturating_add(w)
        })
    };
    let narrowest_process = u16::try_from(HEADINGS[PROCESS_COLUMN].len()).unwrap_or(u16::MAX);
    let spare_process = widths[PROCESS_COLUMN].saturating_sub(narrowest_process);
    for spacing in [2, 1] {
        let excess = needed(&widths, spacing).saturating_sub(available);
        if excess <= spare_process {
            widths[PROCESS_COLUMN] -= excess;
            return (widths, spacing);
        }
    }
    widths[PROCESS_COLUMN] = narrowest_process;
    (widths, 1)
}

/// `name/pid` cut to `width` columns. The name gives way, never the pid: a cut pid would read
/// as another, valid pid. Too narrow for the pid, the name alone is shown.
fn fit_process(name: &str, owner: &str, width: usize) -> String {
    let name_width = name.chars().count();
    let owner_width = owner.chars().count();
    if name_width + owner_width <= width {
        return format!("{name}{owner}");
    }
    let (kept, rest) = if width > owner_width + 1 {
        (width - owner_width - 1, owner)
    } else {
        (width.saturating_sub(1), "")
    };
    let kept: String = name.chars().take(kept).collect();
    format!("{kept}…{rest}")
}

fn draw_table(frame: &mut Frame, area: Rect, reports: &[ListenerReport]) {
    let rows: Vec<RowText> = reports.iter().map(row_text).collect();
    let (widths, spacing) = column_widths(&rows, area.width);
    let header = Row::new(
        HEADINGS
            .iter()
            .enumerate()
            .map(|(column, heading)| Cell::from(aligned(column, (*heading).to_owned()))),
    )
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table_rows = rows.into_iter().map(|mut row| {
        let (name, owner) = &row.process;
        row.cells[PROCESS_COLUMN] = fit_process(name, owner, usize::from(widths[PROCESS_COLUMN]));
        let cells = row.cells.into_iter().enumerate().map(|(column, text)| {
            let cell = Cell::from(aligned(column, text));
            if column == PEAK_COLUMN && row.at_peak {
                cell.style(Style::new().add_modifier(Modifier::BOLD))
            } else {
                cell
            }
        });
        let style = if row.gone {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        };
        Row::new(cells).style(style)
    });
    let table = Table::new(table_rows, widths.map(Constraint::Length))
        .header(header)
        .column_spacing(spacing);
    frame.render_widget(table, area);
    if reports.is_empty() {
        let [_, below_header] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no listeners on the watched ports yet",
                Style::new().add_modifier(Modifier::DIM),
            )),
            below_header,
        );
    }
}

#[cfg(test)]
mod tests;
