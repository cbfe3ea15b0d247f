"""GatewayFrameSerializer's mapping, message by message; run by tests/test_pipecat.py in its own process (importing
pipecat patches asyncio.wait_for process-wide on Python < 3.12). Prints `ok` when every check holds."""
from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputDTMFFrame,
    OutputTransportMessageFrame,
)

from gateway.integrations.pipecat import (
    CallStart,
    GatewayAmdResultFrame,
    GatewayConsultCancelFrame,
    GatewayConsultCompleteFrame,
    GatewayConsultFrame,
    GatewayConsultStateFrame,
    GatewayFrameSerializer,
    GatewayHangupFrame,
    GatewayMarkFrame,
    GatewayMarkPlayedFrame,
    GatewaySayThenTransferFrame,
    GatewaySpeechFrame,
    GatewayTransferFrame,
    GatewayTransferResultFrame,
    redirect_target,
)

START = {"type": "start", "protocol": 1, "call_id": "c1", "carrier": "sip", "direction": "inbound",
         "from": "+15550001111", "to": "+15550002222", "agent_id": 3, "custom_parameters": {"k": "v"},
         "audio": {"encoding": "pcm_s16le", "sample_rate": 8000, "channels": 1, "frame_ms": 20},
         "transfer": {"enabled": True, "options": []}}


async def main() -> None:
    call = CallStart.from_message(START)
    assert (call.call_id, call.sample_rate, call.from_number, call.custom_parameters) == (
        "c1", 8000, "+15550001111", {"k": "v"})
    for bad in ({"type": "dtmf"}, {"type": "start", "call_id": "c1"}, ["start"]):
        try:
            CallStart.from_message(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r} as start")

    s = GatewayFrameSerializer(call, GatewayFrameSerializer.InputParams(sample_rate=8000))
    # pipecat → gateway
    assert await s.serialize(InterruptionFrame()) == '{"type":"clear"}'
    pcm = b"\x01\x00" * 160
    assert await s.serialize(OutputAudioRawFrame(audio=pcm, sample_rate=8000, num_channels=1)) == pcm
    up = b""                                   # 24 kHz TTS audio → the call's 8 kHz (soxr streams: it lags a bit)
    for _ in range(10):
        up += await s.serialize(OutputAudioRawFrame(audio=b"\x00\x10" * 480, sample_rate=24000,
                                                    num_channels=1)) or b""
    assert 0 < len(up) <= 3200 and len(up) % 2 == 0, len(up)
    assert await s.serialize(OutputDTMFFrame.from_string("12#")) == '{"type":"dtmf","digits":"12#"}'
    assert await s.serialize(GatewayTransferFrame("+15550001234")) == '{"type":"transfer","number":"+15550001234"}'
    assert await s.serialize(GatewayTransferFrame()) == '{"type":"transfer"}'
    assert await s.serialize(GatewayConsultFrame("+1555", "hi")) == '{"type":"consult","number":"+1555","message":"hi"}'
    assert await s.serialize(GatewayConsultCompleteFrame()) == '{"type":"consult_complete"}'
    assert await s.serialize(GatewayConsultCancelFrame()) == '{"type":"consult_cancel"}'
    assert await s.serialize(GatewayMarkFrame("greeting")) == '{"type":"mark","name":"greeting"}'
    assert await s.serialize(OutputTransportMessageFrame(message={"type": "clear"})) == '{"type":"clear"}'
    assert not GatewayTransferFrame().interruptible           # a barge-in does not drop a transfer request

    # gateway → pipecat
    audio = await s.deserialize(pcm)
    assert isinstance(audio, InputAudioRawFrame) and (audio.audio, audio.sample_rate) == (pcm, 8000)
    dtmf = await s.deserialize('{"type":"dtmf","digit":"#","duration_ms":120}')
    assert isinstance(dtmf, InputDTMFFrame) and dtmf.button.value == "#"
    odd = await s.deserialize('{"type":"dtmf","digit":"A","duration_ms":null}')   # pipecat's keypad has no A-D
    assert isinstance(odd, InputTransportMessageFrame) and odd.message["digit"] == "A"
    mark = await s.deserialize('{"type":"mark","name":"greeting"}')
    assert isinstance(mark, GatewayMarkPlayedFrame) and mark.mark == "greeting"
    speech = await s.deserialize('{"type":"speech","speaking":true}')
    assert isinstance(speech, GatewaySpeechFrame) and speech.speaking
    amd = await s.deserialize('{"type":"amd","answered_by":"machine_end_beep","duration_ms":4100,'
                              '"voicemail_message":"Call us back"}')
    assert isinstance(amd, GatewayAmdResultFrame)
    assert (amd.answered_by, amd.duration_ms, amd.voicemail_message) == ("machine_end_beep", 4100, "Call us back")
    result = await s.deserialize('{"type":"transfer_result","target":"+1555","outcome":"busy"}')
    assert isinstance(result, GatewayTransferResultFrame) and (result.target, result.outcome) == ("+1555", "busy")
    say = await s.deserialize('{"type":"say","text":"One moment","then":"transfer","number":"+1555"}')
    assert isinstance(say, GatewaySayThenTransferFrame) and (say.text, say.number) == ("One moment", "+1555")
    consult = await s.deserialize('{"type":"consult","state":"answered","number":"+1555","reason":""}')
    assert isinstance(consult, GatewayConsultStateFrame) and consult.state == "answered"
    newer = await s.deserialize('{"type":"something_new","x":1}')          # forward compatible: passed on
    assert isinstance(newer, InputTransportMessageFrame) and newer.message["x"] == 1
    assert await s.deserialize("not json") is None
    assert await s.deserialize("[1, 2]") is None

    # hangup, both ways, once
    assert await s.serialize(EndFrame(reason="voicemail")) == '{"type":"hangup","reason":"voicemail"}'
    assert await s.serialize(CancelFrame()) is None and await s.serialize(InterruptionFrame()) is None
    cancelled = await GatewayFrameSerializer(call).serialize(CancelFrame())
    assert cancelled == '{"type":"hangup","reason":"pipecat_cancelled"}'
    assert await GatewayFrameSerializer(call).serialize(EndFrame()) == '{"type":"hangup","reason":"agent_hangup"}'
    gone = GatewayFrameSerializer(call)
    hangup = await gone.deserialize('{"type":"hangup","source":"user","reason":"bye"}')
    assert isinstance(hangup, GatewayHangupFrame) and (hangup.source, hangup.reason) == ("user", "bye")
    assert await gone.serialize(EndFrame()) is None                 # the gateway hung up: no hangup back

    assert redirect_target('{"type":"redirect","url":"ws://10.0.0.7:4000/engine/ws?pool=a"}') == \
        "ws://10.0.0.7:4000/engine/ws?pool=a"
    assert redirect_target('{"type":"redirect","url":"http://x/"}') is None and redirect_target(b"{}") is None
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
