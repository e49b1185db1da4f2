// Where a turn's time went, drawn as SVG: a waterfall per turn and a sparkline of recent turn gaps.
// Every number comes from the turn_end metrics (ms after the end of the user's speech); nothing is estimated.
'use strict';
const SVG_NS = 'http://www.w3.org/2000/svg';
// The stages in the order they happen on the turn-gap path.
const STAGES = [
  ['endpoint_ms', 'endpoint'],
  ['asr_final_ms', 'final transcript'],
  ['first_span_ms', 'first words'],
  ['first_audio_ms', 'first audio'],
];

function svgEl(name, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

function fmtMs(v) { return v == null ? '–' : `${Math.round(v)} ms`; }

// The stage values a waterfall draws (also what voiceStats.waterfalls records).
function waterfallValues(m) {
  const out = { turn_gap_ms: m.turn_gap_ms, acceptance: m.acceptance, mean_draft_len: m.mean_draft_len };
  for (const [key] of STAGES) out[key] = m[key];
  return out;
}

// One row per stage. A stage's bar starts where the latest earlier stage that finished before it
// ended: stages done ahead of the endpoint (a predictive reply) start earlier than the endpoint.
function waterfallSvg(m) {
  const W = 320, LABEL = 104, VALUE = 56, ROW = 16, TOP = 4;
  const known = STAGES.map(([k]) => m[k]).filter((v) => v != null);
  const span = Math.max(1, ...known, m.turn_gap_ms || 0);
  const x = (v) => LABEL + (Math.max(0, v) / span) * (W - LABEL - VALUE);
  const svg = svgEl('svg', { class: 'waterfall', viewBox: `0 0 ${W} ${TOP + ROW * STAGES.length + 4}`,
                             role: 'img', 'aria-label': waterfallLabel(m) });
  svg.append(svgEl('line', { x1: x(0), x2: x(0), y1: 0, y2: TOP + ROW * STAGES.length, class: 'axis' }));
  STAGES.forEach(([key, label], i) => {
    const v = m[key], y = TOP + i * ROW;
    const g = svgEl('g', { 'data-stage': key, 'data-ms': v == null ? '' : String(v) });
    g.append(svgEl('text', { x: 0, y: y + 11, class: 'label' }, label));
    if (v != null) {
      const earlier = STAGES.slice(0, i).map(([k]) => m[k]).filter((p) => p != null && p <= v);
      const start = Math.max(0, ...earlier);
      g.append(svgEl('rect', { x: x(start), y: y + 2, width: Math.max(2, x(v) - x(start)), height: ROW - 5,
                               class: `bar stage-${i}` }));
    }
    g.append(svgEl('text', { x: W, y: y + 11, class: 'value', 'text-anchor': 'end' }, fmtMs(v)));
    svg.append(g);
  });
  return svg;
}

function waterfallLabel(m) {
  return 'After you stopped speaking: ' + STAGES.map(([k, label]) => `${label} ${fmtMs(m[k])}`).join(', ');
}

function waterfallCaption(m) {
  const parts = [`turn gap ${fmtMs(m.turn_gap_ms)}`];
  if (m.tokens) parts.push(`drafts accepted ${Math.round(m.acceptance * 100)} %`, `mean draft ${m.mean_draft_len.toFixed(2)}`);
  if (m.predictive) parts.push('prepared before the endpoint');
  return parts.join(' · ');
}

// A figure for one turn: the waterfall and a line of draft figures.
function waterfallFigure(m) {
  const fig = document.createElement('figure');
  fig.className = 'turn-latency';
  fig.append(waterfallSvg(m));
  const cap = document.createElement('figcaption');
  cap.textContent = waterfallCaption(m);
  fig.append(cap);
  return fig;
}

// A sparkline of turn gaps (oldest first); null gaps (no audio) are skipped.
function sparklineSvg(gaps) {
  const W = 220, H = 40, PAD = 3;
  const vals = gaps.filter((g) => g != null);
  const svg = svgEl('svg', { class: 'sparkline', viewBox: `0 0 ${W} ${H}`, role: 'img',
                             'aria-label': vals.length ? `Recent turn gaps: ${vals.map(fmtMs).join(', ')}` : 'No turns yet' });
  if (!vals.length) return svg;
  const hi = Math.max(...vals), lo = Math.min(0, ...vals);
  const x = (i) => (vals.length === 1 ? W / 2 : PAD + (i / (vals.length - 1)) * (W - 2 * PAD));
  const y = (v) => H - PAD - ((v - lo) / Math.max(1, hi - lo)) * (H - 2 * PAD);
  svg.append(svgEl('polyline', { points: vals.map((v, i) => `${x(i)},${y(v)}`).join(' '), class: 'line' }));
  const last = vals.length - 1;
  svg.append(svgEl('circle', { cx: x(last), cy: y(vals[last]), r: 3, class: 'dot' }));
  return svg;
}
