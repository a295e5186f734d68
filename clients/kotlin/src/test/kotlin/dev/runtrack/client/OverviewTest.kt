package dev.runtrack.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.params.ParameterizedTest
import org.junit.jupiter.params.provider.ValueSource
import kotlin.math.abs

/** The phone's overview against figures the server's own analysis computed on the same trails (fixtures.py). */
class OverviewTest {
    private fun resource(name: String): List<Map<String, String>> {
        val lines = checkNotNull(javaClass.getResource("/overview/$name")) { "no fixture $name" }.readText().trimEnd().lines()
        val header = lines.first().split(',')
        return lines.drop(1).map { header.zip(it.split(',')).toMap() }
    }

    private fun trail(name: String): List<Sample> = resource("$name.csv").map {
        Sample(
            seq = it.getValue("seq").toInt(),
            timeUs = it.getValue("time_us").toLong(),
            latitude = it.getValue("latitude").toDouble(),
            longitude = it.getValue("longitude").toDouble(),
            altitudeM = it.getValue("altitude_m").toDoubleOrNull(),
            heartRateBpm = it.getValue("heart_rate_bpm").toIntOrNull(),
            afterPause = it.getValue("after_pause") == "1",
        )
    }

    private fun assertWithinHalfPercent(expected: Double, actual: Double, what: String) {
        val allowed = 0.005 * abs(expected)
        assertTrue(abs(actual - expected) <= allowed, "$what: server $expected, phone $actual")
    }

    @ParameterizedTest
    @ValueSource(strings = ["city_loop", "pauses", "hill_climb", "arctic_long", "standing"])
    fun `the overview equals the server's analysis of the same trail`(name: String) {
        val expected = resource("expected.csv").single { it["trail"] == name }
        val overview = Overview.of(trail(name))

        assertEquals(expected.getValue("start_us").toLong(), overview.startUs)
        assertEquals(expected.getValue("end_us").toLong(), overview.endUs)
        assertEquals(expected.getValue("point_count").toInt(), overview.pointCount)
        assertWithinHalfPercent(expected.getValue("distance_m").toDouble(), overview.distanceM, "distance")
        assertWithinHalfPercent(expected.getValue("moving_time_us").toDouble(), overview.movingTimeUs.toDouble(), "moving time")
        assertWithinHalfPercent(expected.getValue("elevation_gain_m").toDouble(), overview.elevationGainM, "elevation gain")
        val heartRate = expected.getValue("avg_heart_rate_bpm").toDoubleOrNull()
        if (heartRate == null) assertNull(overview.avgHeartRateBpm) else assertWithinHalfPercent(heartRate, overview.avgHeartRateBpm!!, "heart rate")
        assertEquals(expected.getValue("polyline"), overview.polyline)
    }

    @Test
    fun `distance is measured on the WGS84 ellipsoid, not a sphere`() {
        // A degree of latitude from the equator is 110,574.389 m on WGS84 (111,195 m on a 6,371 km sphere).
        assertEquals(110_574.389, Overview.of(listOf(Sample(1, 0, 0.0, 0.0), Sample(2, 1, 1.0, 0.0))).distanceM, 0.01)
    }

    @Test
    fun `the polyline is Google's encoding of the documented example`() {
        assertEquals("_p~iF~ps|U_ulLnnqC_mqNvxq`@", encodePolyline(listOf(38.5 to -120.2, 40.7 to -120.95, 43.252 to -126.453)))
    }

    @Test
    fun `nothing between a pause and the point after it counts`() {
        val walk = listOf(
            Sample(1, 0, 45.0, 7.0),
            Sample(2, 10_000_000, 45.0001, 7.0),  // about 11 m in 10 s: moving
            Sample(3, 600_000_000, 45.1, 7.0, afterPause = true),  // 11 km away, ten minutes later
            Sample(4, 610_000_000, 45.1001, 7.0),
        )
        val overview = Overview.of(walk)
        val oneStep = Overview.of(walk.take(2)).distanceM
        assertEquals(2 * oneStep, overview.distanceM, 0.01)
        assertEquals(20_000_000, overview.movingTimeUs)
    }

    @Test
    fun `altitude wandering within the hysteresis is no climb, a real climb is`() {
        val flat = (0 until 200).map { Sample(it + 1, it * 1_000_000L, 45.0 + it * 1e-5, 7.0, altitudeM = 100.0 + if (it % 2 == 0) 0.9 else -0.9) }
        assertEquals(0.0, Overview.of(flat).elevationGainM)
        // 19.9 m up; smoothing trims 0.25 m at each end, and the last climb under 2 m is not credited.
        val climb = flat.map { it.copy(altitudeM = 100.0 + it.seq * 0.1) }
        assertTrue(Overview.of(climb).elevationGainM in 17.4..19.4)
    }

    @Test
    fun `a trail of more than ten thousand points keeps every second one in its polyline`() {
        val samples = (0 until 10_001).map { Sample(it + 1, it * 1_000_000L, 45.0 + it * 1e-4, 7.0) }
        val kept = samples.indices.filter { it % 2 == 0 }.map { samples[it].latitude to samples[it].longitude }
        assertEquals(encodePolyline(kept), Overview.of(samples).polyline)
    }
}
