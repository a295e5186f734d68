package dev.runtrack.client.stack

import dev.runtrack.client.Connection
import dev.runtrack.client.LiveLinks
import dev.runtrack.client.Overview
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.Tokens
import dev.runtrack.client.toProto
import dev.runtrack.client.toSample
import io.grpc.Status
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import runtrack.v1.Summary.StopRunRequest
import runtrack.v1.SummaryServiceGrpcKt.SummaryServiceCoroutineStub
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.getRunRequest
import runtrack.v1.getTrackCursorRequest
import runtrack.v1.getTrackRequest
import runtrack.v1.watchRunRequest
import java.nio.file.Path
import kotlin.time.Duration.Companion.seconds

/**
 * The attacker's side (CONTRACT §5, §6, §16): another runner who knows a run's id, with a valid token
 * of their own, gets nothing of it. Stopping it or recording into it is PERMISSION_DENIED
 * (`RUN_ID_TAKEN`), reading it NOT_FOUND (a private run's existence is not revealed), before and after
 * the owner stops it; and the owner's run reads the same afterwards.
 */
@Tag("stack")
class StrangerStackTest {
    @TempDir
    lateinit var dir: Path

    private val stack = StackEnvironment.current

    @Test
    fun `a stranger's token can neither stop nor record into nor read another runner's run`() = runBlocking {
        val owner = stack.token("victim")
        val stranger = stack.token("stranger")
        val fixes = trail(40, origin = 51.5072 to -0.1276)
        val channel = stack.channel()
        val tracking = TrackingServiceCoroutineStub(channel)
        val summary = SummaryServiceCoroutineStub(channel)
        try {
            TestPhone(dir, "owner").use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, Tokens { owner }, testSettings)
                val runId = recorder.start()
                fixes.forEach(recorder::addPoint)
                withTimeout(30.seconds) { recorder.state.first { it.durableSeq == fixes.size } }
                val ownersOverview = Overview.of(phone.queue.trail(runId).map { it.toSample() }).toProto()

                // While the owner records: the stranger's own phone tries to take the run over.
                TestPhone(dir, "stranger").use { theirs ->
                    val intruder = RunRecorder(channel, theirs.queue, theirs.scope, Tokens { stranger }, testSettings)
                    intruder.start(runId)
                    trail(5, origin = 0.0 to 0.0).forEach(intruder::addPoint)
                    val failed = withTimeout(30.seconds) { intruder.state.first { it.connection == Connection.FAILED } }
                    assertEquals(Status.Code.PERMISSION_DENIED, failed.error?.code, "$failed")
                    assertEquals("RUN_ID_TAKEN", failed.error?.reason)
                    assertEquals(0, failed.durableSeq, "nothing of theirs counted as stored")
                    val stop = refused("STOP RUN from the stranger's recorder") { intruder.stop() }
                    assertEquals(Status.Code.PERMISSION_DENIED, stop.code, "$stop")
                    assertEquals("RUN_ID_TAKEN", stop.reason)
                }
                strangerIsRefused(tracking, summary, runId, stranger, ownersOverview)

                val run = withTimeout(60.seconds) { recorder.stop() }
                withTimeout(60.seconds) { recorder.synced() }
                assertEquals(ownersOverview, run.overview, "the owner's overview, not the stranger's")

                // Stopped (PRIVATE, on the owner's dashboard): still nothing for the stranger.
                strangerIsRefused(tracking, summary, runId, stranger, ownersOverview)
                val owners = summary.getRun(getRunRequest { this.runId = runId }, bearer(owner))
                assertEquals(run.withoutAnalysis(), owners.withoutAnalysis())
                assertEquals(stack.user("victim"), owners.userId)
                val (stored, _) = storedTrail(channel, runId, owner)
                assertEquals(fixes.map { it.latitude to it.longitude }, stored.map { it.latitude to it.longitude }, "the owner's points only")
            }
        } finally {
            channel.shutdownNow()
        }
    }

    private suspend fun strangerIsRefused(
        tracking: TrackingServiceCoroutineStub,
        summary: SummaryServiceCoroutineStub,
        runId: String,
        stranger: String,
        overview: runtrack.v1.Summary.RunOverview,
    ) {
        val asStranger = bearer(stranger)
        val stopRequest = StopRunRequest.newBuilder().setRunId(runId).setOverview(overview).build()
        val stop = refused("StopRun by a stranger") { summary.stopRun(stopRequest, asStranger) }
        assertEquals(Status.Code.PERMISSION_DENIED, stop.code, "$stop")
        assertEquals("RUN_ID_TAKEN", stop.reason)
        // Naming the owner as the runner does not make the stranger the owner.
        val named = stopRequest.toBuilder().setUserId(stack.user("victim")).build()
        assertEquals(Status.Code.PERMISSION_DENIED, refused("StopRun naming the owner") { summary.stopRun(named, asStranger) }.code)

        val reads = mapOf<String, suspend () -> Any?>(
            "GetRun" to { summary.getRun(getRunRequest { this.runId = runId }, asStranger) },
            "GetTrack" to { tracking.getTrack(getTrackRequest { this.runId = runId }, asStranger) },
            "GetTrackCursor" to { tracking.getTrackCursor(getTrackCursorRequest { this.runId = runId }, asStranger) },
            "WatchRun" to { tracking.watchRun(watchRunRequest { this.runId = runId }, asStranger).first() },
            "ListLiveLinks" to { LiveLinks(tracking.channel, Tokens { stranger }).list(runId) },
            "CreateLiveLink" to { LiveLinks(tracking.channel, Tokens { stranger }).create(runId) },
        )
        for ((name, read) in reads) {
            val refusal = refused("$name by a stranger", read)
            assertEquals(Status.Code.NOT_FOUND, refusal.code, "$name: $refusal")
        }
    }
}
