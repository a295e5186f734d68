@file:JvmName("Phone")

package dev.runtrack.client.phone

import dev.runtrack.client.Channels
import dev.runtrack.client.Connection
import dev.runtrack.client.Fix
import dev.runtrack.client.RecorderState
import dev.runtrack.client.RunPhase
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.SqlitePointQueue
import dev.runtrack.client.Tokens
import io.grpc.ManagedChannel
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import java.io.BufferedReader
import java.nio.channels.FileChannel
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.StandardOpenOption
import java.time.Instant
import java.time.ZoneId
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess

/**
 * `scripts/phone record`'s phone: records one run through [RunRecorder] and [SqlitePointQueue], the way
 * an app does, from fixes read on standard input (devstack/phone.py writes them from a GPX or FIT file
 * or a generated route), one every 1/rate seconds. Prints the queue (points waiting) and the server's
 * cursor (the last durable seq) as it goes on standard error, ends with STOP RUN, waits until every
 * point is durable, and prints the run id alone on standard output.
 *
 * The queue file outlives the process: a process killed mid-run and started again on the same queue
 * and the same input takes the run up where the queue says it stood (the fixes it recorded are not
 * recorded again; a run already stopping is only finished).
 *
 * Input: one fix a line, tab-separated `time_us latitude longitude altitude_m heart_rate_bpm
 * cadence_spm speed_mps after_pause` (an empty field: not measured; after_pause 1 or 0). The times
 * keep their spacing and are moved as late as they can be with no fix later than the moment it is
 * recorded: at 1 Hz on a 1 Hz trail, the phone's clock; faster, a trail that ends as recording ends.
 */
fun main(args: Array<String>) {
    val options = try {
        PhoneOptions.parse(args.toList())
    } catch (error: IllegalArgumentException) {
        System.err.println("phone: ${error.message}\n$USAGE")
        exitProcess(2)
    }
    val input = try {
        readFixes(System.`in`.bufferedReader())
    } catch (error: IllegalArgumentException) {
        System.err.println("phone: ${error.message}")
        exitProcess(2)
    }
    exitProcess(runBlocking { PhoneSession(options).record(input) })
}

const val USAGE = """usage: Phone --endpoint HOST:PORT (--ca PEM | --plaintext | system CAs) --queue PATH
             [--rate HZ] [--token T (or RUNTRACK_TOKEN)] [--time-zone ZONE] < fixes.tsv"""

data class PhoneOptions(
    val host: String,
    val port: Int,
    val queue: Path,
    val rate: Double = 1.0,
    val caPem: Path? = null,
    val plaintext: Boolean = false,
    val token: String? = null,
    val timeZone: String = ZoneId.systemDefault().id,
) {
    companion object {
        fun parse(args: List<String>, env: Map<String, String> = System.getenv()): PhoneOptions {
            val values = mutableMapOf<String, String>()
            var plaintext = false
            val rest = args.iterator()
            while (rest.hasNext()) {
                when (val name = rest.next()) {
                    "--plaintext" -> plaintext = true
                    "--endpoint", "--queue", "--rate", "--ca", "--token", "--time-zone" -> {
                        require(rest.hasNext()) { "$name needs a value" }
                        values[name] = rest.next()
                    }
                    else -> throw IllegalArgumentException("unknown argument $name")
                }
            }
            val endpoint = requireNotNull(values["--endpoint"]) { "--endpoint HOST:PORT is needed" }
            val host = endpoint.substringBeforeLast(':').removePrefix("[").removeSuffix("]")
            val port = requireNotNull(endpoint.substringAfterLast(':', "").toIntOrNull()?.takeIf { it in 1..65535 }) {
                "--endpoint $endpoint: expected HOST:PORT"
            }
            val rate = values["--rate"]?.let { requireNotNull(it.toDoubleOrNull()?.takeIf { r -> r > 0 && r <= 1000 }) { "--rate $it: a number of Hz in (0, 1000]" } }
            require(!(plaintext && values.containsKey("--ca"))) { "--plaintext and --ca: one or the other" }
            return PhoneOptions(
                host = host,
                port = port,
                queue = Path.of(requireNotNull(values["--queue"]) { "--queue PATH is needed" }),
                rate = rate ?: 1.0,
                caPem = values["--ca"]?.let(Path::of),
                plaintext = plaintext,
                token = values["--token"] ?: env["RUNTRACK_TOKEN"]?.takeIf { it.isNotEmpty() },
                timeZone = values["--time-zone"] ?: ZoneId.systemDefault().id,
            )
        }
    }
}

/** One fix of the input, its time as the file or route has it (microseconds since the epoch). */
data class InputFix(
    val timeUs: Long,
    val latitude: Double,
    val longitude: Double,
    val altitudeM: Double? = null,
    val heartRateBpm: Int? = null,
    val cadenceSpm: Int? = null,
    val speedMps: Float? = null,
    val afterPause: Boolean = false,
) {
    fun toFix(shiftUs: Long): Fix = Fix(
        time = instantOfMicros(timeUs + shiftUs),
        latitude = latitude,
        longitude = longitude,
        altitudeM = altitudeM,
        speedMps = speedMps,
        heartRateBpm = heartRateBpm,
        cadenceSpm = cadenceSpm,
    )
}

fun readFixes(reader: BufferedReader): List<InputFix> = reader.lineSequence().withIndex()
    .filter { (_, line) -> line.isNotBlank() }
    .map { (i, line) ->
        val f = line.split('\t')
        require(f.size == 8) { "input line ${i + 1}: expected 8 tab-separated fields, got ${f.size}" }
        try {
            InputFix(
                timeUs = f[0].toLong(),
                latitude = f[1].toDouble(),
                longitude = f[2].toDouble(),
                altitudeM = f[3].ifEmpty { null }?.toDouble(),
                heartRateBpm = f[4].ifEmpty { null }?.toInt(),
                cadenceSpm = f[5].ifEmpty { null }?.toInt(),
                speedMps = f[6].ifEmpty { null }?.toFloat(),
                afterPause = f[7] == "1",
            )
        } catch (error: NumberFormatException) {
            throw IllegalArgumentException("input line ${i + 1}: ${error.message}")
        }
    }.toList()

/**
 * How far to move the input's times: as late as possible with no fix later than the moment it is
 * recorded (fix i at [startUs] + i/[rateHz] s). The input's spacing is kept.
 */
fun timeShiftUs(input: List<InputFix>, startUs: Long, rateHz: Double): Long =
    input.withIndex().minOf { (i, fix) -> startUs + (i * 1e6 / rateHz).toLong() - fix.timeUs }

fun instantOfMicros(us: Long): Instant = Instant.ofEpochSecond(Math.floorDiv(us, 1_000_000L), Math.floorMod(us, 1_000_000L) * 1_000L)

fun micros(instant: Instant): Long = instant.epochSecond * 1_000_000L + instant.nano / 1_000

/** The first [count] fixes of [input] are those of [trail] (positions equal), as a run taken up again must show. */
fun sameFixes(input: List<InputFix>, trail: List<Pair<Double, Double>>): Boolean =
    trail.size <= input.size && trail.indices.all { input[it].latitude == trail[it].first && input[it].longitude == trail[it].second }

private class PhoneSession(private val options: PhoneOptions) {
    private val started = System.nanoTime()
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private val tokens = Tokens { options.token }

    suspend fun record(input: List<InputFix>): Int {
        options.queue.toAbsolutePath().parent?.let { Files.createDirectories(it) }
        val lockFile = options.queue.resolveSibling("${options.queue.fileName}.lock")
        FileChannel.open(lockFile, StandardOpenOption.CREATE, StandardOpenOption.WRITE).use { lockChannel ->
            if (lockChannel.tryLock() == null) {
                say("another phone records on ${options.queue}: pass another --queue")
                return 1
            }
            val channel = channel()
            try {
                return SqlitePointQueue(options.queue).use { queue -> recordOn(channel, queue, input) }
            } finally {
                scope.cancel()
                channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS)
            }
        }
    }

    private fun channel(): ManagedChannel = when {
        options.plaintext -> Channels.plaintext(options.host, options.port)
        else -> Channels.tls(options.host, options.port, options.caPem?.let(Files::readAllBytes))
    }

    private suspend fun recordOn(channel: ManagedChannel, queue: SqlitePointQueue, input: List<InputFix>): Int {
        val queued = queue.runs()
        val (open, closing) = queued.partition { it.phase == RunPhase.RECORDING || it.phase == RunPhase.PAUSED }
        // Runs a killed process left stopping: STOP RUN again, and every point durable.
        for (run in closing) {
            say("taking up run ${run.runId} (${run.phase.name.lowercase()}, ${run.lastSeq} points, durable up to ${run.durableSeq})")
            val recorder = RunRecorder(channel, queue, scope, tokens)
            recorder.reopen(run.runId)
            if (!finish(recorder, run.lastSeq)) return 1
            println(run.runId)
        }
        if (open.size > 1) {
            say("${options.queue} holds ${open.size} runs still recording: ${open.joinToString { it.runId }}")
            return 1
        }
        val recorder = RunRecorder(channel, queue, scope, tokens)
        val from: Int
        val shiftUs: Long
        val runId: String
        val taken = open.singleOrNull()
        if (taken == null) {
            if (input.isEmpty()) return if (closing.isEmpty()) 1.also { say("no fix on the input and no run in the queue") } else 0
            shiftUs = timeShiftUs(input, micros(Instant.now()), options.rate)
            runId = recorder.start()
            from = 0
            say("START RUN $runId: ${input.size} fixes at ${options.rate} Hz, queue ${options.queue}")
        } else {
            val trail = queue.trail(taken.runId)
            if (!sameFixes(input, trail.map { it.latitude to it.longitude })) {
                say(
                    "${options.queue} holds run ${taken.runId} (${trail.size} fixes) recorded from another input: record the same " +
                        "file or route again to go on with it, or pass another --queue",
                )
                return 1
            }
            runId = taken.runId
            from = trail.size
            shiftUs = trail.lastOrNull()?.let { micros(Instant.ofEpochSecond(it.time.seconds, it.time.nanos.toLong())) - input[from - 1].timeUs }
                ?: timeShiftUs(input, micros(Instant.now()), options.rate)
            recorder.reopen(runId)
            if (taken.phase == RunPhase.PAUSED) recorder.resume()
            say("taking up run $runId: ${trail.size} of ${input.size} fixes recorded, durable up to ${taken.durableSeq}")
        }

        val progress = scope.launch {
            while (true) {
                delay(1_000)
                report(recorder.state.value, input.size)
            }
        }
        val t0 = System.nanoTime()
        for (i in from until input.size) {
            val dueNs = t0 + ((i - from) * 1e9 / options.rate).toLong()
            val waitMs = (dueNs - System.nanoTime()) / 1_000_000
            if (waitMs > 0) delay(waitMs)
            if (recorder.state.value.connection == Connection.FAILED) break
            val fix = input[i]
            if (fix.afterPause && i > 0) {
                recorder.pause()
                recorder.resume()
            }
            recorder.addPoint(fix.toFix(shiftUs))
        }
        recorder.state.first { it.lastSeq >= input.size || it.connection == Connection.FAILED }
        if (failed(recorder.state.value)) return 1.also { progress.cancel() }
        say("STOP RUN $runId")
        val run = try {
            recorder.stop(options.timeZone)
        } catch (error: Exception) {
            say("STOP RUN refused: $error; the run stays in ${options.queue}")
            return 1
        } finally {
            progress.cancel()
        }
        val overview = run.overview
        say(
            "stopped: ${overview.pointCount} points, %.0f m, moving %d s, climb %.0f m%s".format(
                overview.distanceM, overview.movingTime.seconds, overview.elevationGainM,
                if (overview.hasAvgHeartRateBpm()) ", %.0f bpm".format(overview.avgHeartRateBpm) else "",
            ),
        )
        if (!finish(recorder, input.size)) return 1
        println(runId)
        return 0
    }

    /** Until the run is stopped and every point durable (true), or the server refused it for good (false). */
    private suspend fun finish(recorder: RunRecorder, total: Int): Boolean {
        val progress = scope.launch {
            while (true) {
                delay(1_000)
                report(recorder.state.value, total)
            }
        }
        try {
            val state = recorder.state.first { (it.phase == RunPhase.STOPPED && it.waiting == 0) || it.connection == Connection.FAILED }
            if (failed(state)) return false
            recorder.synced()
            report(recorder.state.value, total, always = true)
            return true
        } finally {
            progress.cancel()
        }
    }

    private fun failed(state: RecorderState): Boolean {
        if (state.connection != Connection.FAILED) return false
        say("the server refused run ${state.runId} for good: ${state.error?.code} ${state.error?.message.orEmpty()}; it stays in ${options.queue}")
        return true
    }

    private var lastReport = ""
    private var lastReportNs = 0L

    /** A line when what it says changed, or every 10 s while it stays the same (a phone waiting for a network). */
    @Synchronized
    private fun report(state: RecorderState, total: Int, always: Boolean = false) {
        val error = state.error?.takeIf { state.connection == Connection.BACKING_OFF }
            ?.let { e -> " (${e.code}${e.message?.takeIf { it.isNotBlank() }?.let { ": ${it.take(80)}" }.orEmpty()})" }.orEmpty()
        val rejected = if (state.rejected > 0) "  rejected ${state.rejected}" else ""
        val line = "%s %d/%d  queue %d  durable %d  %s%s%s".format(
            state.phase?.name?.lowercase() ?: "-", state.lastSeq, total, state.waiting, state.durableSeq,
            state.connection.name.lowercase(), rejected, error,
        )
        val now = System.nanoTime()
        if (!always && line == lastReport && now - lastReportNs < 10_000_000_000L) return
        lastReport = line
        lastReportNs = now
        say(line)
    }

    private fun say(message: String) {
        System.err.println("[%6.1fs] %s".format((System.nanoTime() - started) / 1e9, message))
    }
}
