// The voice page: mic → websocket (16 kHz PCM), server events → state, conversation log, audio, latency.
'use strict';
const $ = (id) => document.getElementById(id);
// The test hook: what the page received, showed and played.
const stats = window.voiceStats = {
  connected: false, ready: false, transcripts: [], replies: [], turnEnds: [], errors: [],
  audioChunksReceived: 0, audioChunksPlayed: 0, audioSecondsPlayed: 0,
  states: [], log: [], levelMax: 0, waterfalls: [], gaps: [], config: null, statuses: [], healthPolls: 0,
};
const SETTINGS_KEY = 'voice.settings';
const settings = Object.assign({ voiceForTyped: true, bargeIn: true },
                               JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}'));
const state = new StateIndicator($('state'), stats.states);
const log = new ConversationLog($('log'), stats);
let ws = null, audioCtx = null, micStream = null, micNode = null, talking = false;
let reconnectDelay = 500, outRate = 22050, nextPlayTime = 0, sources = new Set();
let typedQueue = [], muteReply = false, turnOver = true, sessions = 0;
let stopped = false;  // the user interrupted the reply: its audio still on the wire is dropped until its turn ends
const GOING_AWAY = 1001;  // the server drains: reconnect now (see PROTOCOL.md)
const HEALTH_POLL_MS = 500;  // while the models load /healthz is asked this often; the first 200 connects
const TOKEN = new URLSearchParams(location.hash.slice(1)).get('token');  // server.token_env's secret: #token=…
const JITTER_S = 0.06;  // small playback buffer against network jitter
const INTERRUPTED_SHOW_MS = 1500;  // how long "Interrupted" stays up before "Listening"

function setStatus(text, kind = '') {
  const s = $('status'); s.textContent = text; s.className = kind;
  if (stats.statuses[stats.statuses.length - 1] !== text) stats.statuses.push(text);
}
function announce(text) { $('announce').textContent = text; }
function wsUrl() {
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  return TOKEN ? `${url}?token=${encodeURIComponent(TOKEN)}` : url;  // a browser cannot send the header
}
function restState() { return talking ? 'listening' : 'off'; }

// /healthz: {ready, reason}, or null when the server cannot be reached.
async function health() {
  try {
    return await (await fetch('/healthz', { cache: 'no-store' })).json();
  } catch (err) {
    return null;
  }
}

// Connect once the server is ready: while it loads its models, ask again every HEALTH_POLL_MS
// (no backoff: it will be ready soon); unreachable, full or draining, back off.
async function connectWhenReady() {
  const h = await health();
  stats.healthPolls++;
  if (h && h.ready) { connect(); return; }
  if (h && h.reason === 'loading') {
    setStatus('Loading models…', 'live');
    setTimeout(connectWhenReady, HEALTH_POLL_MS);
    return;
  }
  retryLater(h ? `The server is ${h.reason}` : 'The server cannot be reached');
}

function retryLater(why) {
  setStatus(`${why} — reconnecting in ${(reconnectDelay / 1000).toFixed(1)} s…`, 'error');
  setTimeout(connectWhenReady, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, 10000);
}

function connect() {
  let opened = false;
  ws = new WebSocket(wsUrl());
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    opened = true;
    stats.connected = true; reconnectDelay = 500;
    ws.send(JSON.stringify({ type: 'start', sample_rate: 16000, format: 'pcm_s16le', channels: 1 }));
  };
  ws.onmessage = (ev) => (typeof ev.data === 'string' ? onEvent(JSON.parse(ev.data)) : onAudio(ev.data));
  ws.onclose = (ev) => {
    const hadSession = stats.ready;
    stats.connected = stats.ready = false;
    $('talk').disabled = $('interrupt').disabled = true;
    if (ev.code === GOING_AWAY && hadSession) {  // a refused handshake backs off as below
      // the worker drains (restart, scale-down): it closed at a turn boundary, so the reply already
      // received keeps playing; reconnect at once — through the balancer, to another worker
      stats.goingAway = (stats.goingAway || 0) + 1;
      setStatus('The server is moving this conversation — reconnecting…', 'live');
      setTimeout(connect, 0);
      return;
    }
    flushPlayback();
    state.set(restState());
    // back off after a lost connection or a refused handshake (a wrong #token=…, another origin,
    // a drain that raced /healthz), then ask /healthz again
    retryLater(opened ? 'Connection lost' : 'The server refused the connection');
  };
}

function onEvent(msg) {
  switch (msg.type) {
    case 'ready':
      stats.ready = true; outRate = msg.output_sample_rate;
      if (sessions++ && stats.log.length) log.note('Reconnected: a new session, the assistant does not remember the turns above.');
      showConfig(msg.config);
      $('talk').disabled = false;
      setStatus(talking ? 'Connected.' : 'Connected — press “Talk” (or Space) and ask a question.', 'live');
      break;
    case 'vad':  // the user began speaking, or the server decided they finished (the endpoint)
      if (msg.state === 'speech_start') {
        if (settings.bargeIn) flushPlayback();  // barge-in: the server stops the reply too
        state.set('hearing');
      } else if (msg.state === 'endpoint') state.set('thinking');
      break;
    case 'transcript':
      stats.transcripts.push(msg);
      if (!msg.final) { log.partial(msg.text); break; }
      log.final(msg.text);
      if (!msg.text) { state.set(restState()); break; }
      announce(`You said: ${msg.text}`);
      // a typed turn comes back as its final transcript: its audio is muted if voice is off for typed turns
      muteReply = typedQueue[0] === msg.text ? (typedQueue.shift(), !settings.voiceForTyped) : false;
      stopped = false;
      turnOver = false;
      state.set('thinking');
      break;
    case 'reply':
      stats.replies.push(msg.text);
      $('interrupt').disabled = false;
      log.replyText(msg.text);
      break;
    case 'audio_start':
      outRate = msg.sample_rate;
      if (!muteReply) state.set('speaking');
      break;
    case 'turn_end':
      onTurnEnd(msg);
      break;
    case 'error':
      stats.errors.push(msg);
      setStatus(`Server: ${msg.message}`, 'error');
      break;
  }
}

function onTurnEnd(msg) {
  const m = msg.metrics;
  stats.turnEnds.push(m);
  stats.waterfalls.push(waterfallValues(m));
  stats.gaps.push(m.turn_gap_ms);
  $('interrupt').disabled = true;
  log.turnEnd(msg);
  announce(`Assistant: ${msg.reply}` + (m.interrupted ? ' (interrupted)' : '') + (m.shortened ? ' (shortened)' : ''));
  $('sparkline').replaceChildren(sparklineSvg(stats.gaps.slice(-20)));
  $('last-gap').textContent = fmtMs(m.turn_gap_ms);
  turnOver = true;
  stopped = false;
  if (m.interrupted) {
    flushPlayback();
    if (state.name === 'hearing') return;  // a barge-in: the user is already talking
    state.set('interrupted');
    setTimeout(() => { if (state.name === 'interrupted') state.set(restState()); }, INTERRUPTED_SHOW_MS);
  } else if (!sources.size) state.set(restState());  // else: when the buffered audio has played
}

function showConfig(config) {
  stats.config = config || null;
  const rows = Object.entries(config || {}).filter(([, v]) => v != null);
  $('config').replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt'), dd = document.createElement('dd');
    dt.textContent = k.replace(/_/g, ' '); dd.textContent = String(v);
    return [dt, dd];
  }));
}

function onAudio(buf) {
  stats.audioChunksReceived++;
  if (!audioCtx || muteReply || stopped) return;
  const pcm = new Int16Array(buf);
  const audio = audioCtx.createBuffer(1, pcm.length, outRate);
  const ch = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = audioCtx.createBufferSource();
  src.buffer = audio;
  src.connect(audioCtx.destination);
  const now = audioCtx.currentTime;
  if (nextPlayTime < now + 0.005) nextPlayTime = now + JITTER_S;
  src.start(nextPlayTime);
  nextPlayTime += audio.duration;
  sources.add(src);
  src.onended = () => {
    if (!sources.delete(src)) return;
    stats.audioChunksPlayed++; stats.audioSecondsPlayed += audio.duration;
    if (!sources.size && turnOver && state.name === 'speaking') state.set(restState());
  };
}

function flushPlayback() {
  for (const src of sources) { try { src.stop(); } catch (e) { /* not started */ } }
  sources.clear();
  nextPlayTime = 0;
}

// The mic level: RMS of each 20 ms frame sent, in dBFS mapped from -60..0 to 0..1.
function showLevel(frame) {
  const pcm = new Int16Array(frame);
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const rms = Math.sqrt(sum / Math.max(1, pcm.length)) / 32768;
  const level = rms > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60)) : 0;
  stats.levelMax = Math.max(stats.levelMax, level);
  $('level').value = level;
}

// With barge-in off the page sends silence while a reply plays: the server cannot hear the user then.
function micFrame(frame) {
  showLevel(frame);
  if (!ws || ws.readyState !== WebSocket.OPEN || !stats.ready) return;
  const replying = state.name === 'speaking' || sources.size > 0;
  ws.send(!settings.bargeIn && replying ? new ArrayBuffer(frame.byteLength) : frame);
}

async function startMic() {
  audioCtx = audioCtx || new AudioContext();
  await audioCtx.resume();
  try {
    // Echo cancellation stays on (the server relies on it for barge-in); noise suppression is
    // off: it ate the /s/ of "France" (heard as "friends"), and whisper copes with noise itself.
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: true, channelCount: 1 },
    });
  } catch (err) {
    const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
    setStatus(denied ? 'Microphone access was denied. Allow it in the browser’s site settings and try again.'
                     : `No microphone available (${err && err.name}). You can still type a question.`, 'error');
    return false;
  }
  await audioCtx.audioWorklet.addModule('/static/capture-worklet.js');
  const source = audioCtx.createMediaStreamSource(micStream);
  micNode = new AudioWorkletNode(audioCtx, 'capture-processor');
  micNode.port.onmessage = (ev) => micFrame(ev.data);
  source.connect(micNode);
  return true;
}

function stopMic() {
  if (micNode) { micNode.port.onmessage = null; micNode.disconnect(); micNode = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  $('level').value = 0;
}

async function toggleTalk() {
  const button = $('talk');
  if (button.disabled) return;
  if (talking) {
    talking = false; stopMic();
    button.textContent = 'Talk'; button.setAttribute('aria-pressed', 'false');
    setStatus('Connected — the microphone is off.');
    if (state.name === 'listening' || state.name === 'hearing') state.set('off');
    return;
  }
  if (!(await startMic())) return;
  talking = true;
  button.textContent = 'Stop'; button.setAttribute('aria-pressed', 'true');
  setStatus('Connected — the microphone is on.', 'live');
  if (state.name === 'off') state.set('listening');
}

function interrupt() {
  if (!ws || ws.readyState !== WebSocket.OPEN || $('interrupt').disabled) return;
  ws.send(JSON.stringify({ type: 'interrupt' }));
  stopped = true;
  flushPlayback();
}

$('talk').onclick = toggleTalk;
$('interrupt').onclick = interrupt;
$('clear').onclick = () => log.clear();

$('typed').onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  audioCtx = audioCtx || new AudioContext();
  await audioCtx.resume();
  flushPlayback();
  typedQueue.push(text);
  ws.send(JSON.stringify({ type: 'text', text }));
  $('text').value = '';
};

// Space talks / stops and Escape interrupts, unless the focus is somewhere that uses those keys.
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') { interrupt(); return; }
  if (ev.code !== 'Space' || ev.repeat || ev.target.closest('input, textarea, select, button, a, [contenteditable]')) return;
  ev.preventDefault();
  toggleTalk();
});

for (const [id, key] of [['voice-typed', 'voiceForTyped'], ['barge-in', 'bargeIn']]) {
  $(id).checked = settings[key];
  $(id).onchange = () => { settings[key] = $(id).checked; localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings)); };
}
$('sparkline').replaceChildren(sparklineSvg([]));
connectWhenReady();
