// The voice page: mic → websocket (16 kHz PCM), server events → transcript, reply, audio, latency.
'use strict';
const $ = (id) => document.getElementById(id);
const stats = window.voiceStats = {
  connected: false, ready: false, transcripts: [], replies: [], turnEnds: [], errors: [],
  audioChunksReceived: 0, audioChunksPlayed: 0, audioSecondsPlayed: 0,
};
let ws = null, audioCtx = null, micStream = null, micNode = null, talking = false;
let reconnectDelay = 500, outRate = 22050, nextPlayTime = 0, sources = new Set(), replyActive = false;
const JITTER_S = 0.06;  // small playback buffer against network jitter

function setStatus(text, kind = '') { const s = $('status'); s.textContent = text; s.className = kind; }
function wsUrl() { return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws'; }

function connect() {
  ws = new WebSocket(wsUrl());
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    stats.connected = true; reconnectDelay = 500;
    ws.send(JSON.stringify({ type: 'start', sample_rate: 16000, format: 'pcm_s16le', channels: 1 }));
  };
  ws.onmessage = (ev) => (typeof ev.data === 'string' ? onEvent(JSON.parse(ev.data)) : onAudio(ev.data));
  ws.onclose = () => {
    stats.connected = stats.ready = false;
    $('talk').disabled = $('interrupt').disabled = true;
    flushPlayback();
    setStatus(`Connection lost — reconnecting in ${(reconnectDelay / 1000).toFixed(1)} s…`, 'error');
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
  };
}

function onEvent(msg) {
  switch (msg.type) {
    case 'ready':
      stats.ready = true; outRate = msg.output_sample_rate;
      $('talk').disabled = false;
      setStatus(talking ? 'Listening…' : 'Ready — press “Start talking”.', talking ? 'live' : '');
      break;
    case 'vad':
      if (msg.state === 'speech_start') {
        flushPlayback();  // barge-in: the server stops the reply too
        $('partial').textContent = ''; $('final').textContent = '';
      }
      break;
    case 'transcript':
      stats.transcripts.push(msg);
      if (msg.final) {
        $('final').textContent = msg.text; $('partial').textContent = ''; $('reply').textContent = '';
        $('reply-note').hidden = true;
      } else $('partial').textContent = msg.text;
      break;
    case 'reply':
      stats.replies.push(msg.text);
      replyActive = true; $('interrupt').disabled = false;
      $('reply').textContent += msg.text;
      break;
    case 'audio_start':
      outRate = msg.sample_rate;
      break;
    case 'turn_end':
      stats.turnEnds.push(msg.metrics);
      replyActive = false; $('interrupt').disabled = true;
      if (msg.metrics.interrupted) flushPlayback();
      $('reply-note').hidden = !msg.metrics.shortened;  // the reply policy cut it short: it can be continued
      showMetrics(msg.metrics);
      break;
    case 'error':
      stats.errors.push(msg);
      setStatus(`Server: ${msg.message}`, 'error');
      break;
  }
}

function ms(v) { return v == null ? '–' : `${Math.round(v)} ms`; }
function showMetrics(m) {
  $('m-gap').textContent = ms(m.turn_gap_ms) + (m.interrupted ? ' (interrupted)' : '');
  $('m-endpoint').textContent = ms(m.endpoint_ms);
  $('m-asr').textContent = ms(m.asr_final_ms);
  $('m-span').textContent = ms(m.first_span_ms);
  $('m-audio').textContent = ms(m.first_audio_ms);
  $('m-acc').textContent = `${(m.acceptance * 100).toFixed(0)} % / ${m.mean_draft_len.toFixed(2)}`;
  const li = document.createElement('li');
  li.textContent = ms(m.turn_gap_ms);
  $('history').prepend(li);
  while ($('history').children.length > 10) $('history').lastChild.remove();
}

function onAudio(buf) {
  stats.audioChunksReceived++;
  if (!audioCtx) return;
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
    if (sources.delete(src)) { stats.audioChunksPlayed++; stats.audioSecondsPlayed += audio.duration; }
  };
}

function flushPlayback() {
  for (const src of sources) { try { src.stop(); } catch (e) { /* not started */ } }
  sources.clear();
  nextPlayTime = 0;
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
  micNode.port.onmessage = (ev) => { if (ws && ws.readyState === WebSocket.OPEN && stats.ready) ws.send(ev.data); };
  source.connect(micNode);
  return true;
}

function stopMic() {
  if (micNode) { micNode.port.onmessage = null; micNode.disconnect(); micNode = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
}

$('talk').onclick = async () => {
  if (talking) {
    talking = false; stopMic();
    $('talk').textContent = 'Start talking'; $('talk').classList.remove('on');
    setStatus('Paused — press “Start talking”.');
    return;
  }
  if (!(await startMic())) return;
  talking = true;
  $('talk').textContent = 'Stop talking'; $('talk').classList.add('on');
  setStatus('Listening…', 'live');
};

$('interrupt').onclick = () => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'interrupt' }));
  flushPlayback();
};

$('typed').onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  audioCtx = audioCtx || new AudioContext();
  await audioCtx.resume();
  flushPlayback();
  ws.send(JSON.stringify({ type: 'text', text }));
  $('text').value = '';
};

connect();
